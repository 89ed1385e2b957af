package host

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

func TestOpStream(t *testing.T) {
	for _, c := range []struct {
		name   string
		writes []string
		out    string // the operation's
		idle   string // before and after it
		code   int
	}{
		{"lines", []string{"a\nb\ntok1 0\n"}, "a\nb\n", "", 0},
		{"split writes", []string{"a", "\nb\nto", "k1 3", "\nafter\n"}, "a\nb\n", "after\n", 3},
		{"no newline at the end", []string{"partial", "tok1 7\n"}, "partial", "", 7},
		{"another token is output", []string{"tok2 1\ntok1 0\n"}, "tok2 1\n", "", 0},
		{"not a code", []string{"tok1 x\ntok1 0\n"}, "tok1 x\n", "", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			var idle, out strings.Builder
			o := newOpStream(&idle)
			ch := o.begin("tok1", &out)
			for _, w := range c.writes {
				o.Write([]byte(w))
			}
			select {
			case e := <-ch:
				if e.err != nil || e.code != c.code {
					t.Errorf("end %+v, want code %d", e, c.code)
				}
			default:
				t.Fatal("the operation did not end")
			}
			if out.String() != c.out || idle.String() != c.idle {
				t.Errorf("output %q and idle %q, want %q and %q", out.String(), idle.String(), c.out, c.idle)
			}
		})
	}
	o := newOpStream(io.Discard)
	ch := o.begin("tok1", io.Discard)
	o.close(io.ErrUnexpectedEOF)
	if e := <-ch; !errors.Is(e.err, io.ErrUnexpectedEOF) {
		t.Errorf("a stream that ended mid-operation: %+v", e)
	}
	if e := <-o.begin("tok2", io.Discard); e.err == nil {
		t.Error("an operation begun on an ended stream does not fail")
	}
}

// lockSession is a fake host's lock command with lockProgram's protocol:
// each "run TOKEN N" and its N lines run as ops[argv[0]], with the end
// line on both streams.
type lockSession struct {
	ops map[string]func(args []string, stdout, stderr io.Writer) int
	ran []string
	// hang: the operation never ends (until the session is killed).
	hang string
}

func (f *lockSession) Run(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	fmt.Fprint(stdout, "locked\nend\n")
	br := bufio.NewReader(stdin)
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return 0, nil
		}
		var tok string
		var n int
		if _, err := fmt.Sscanf(l, "run %s %d", &tok, &n); err != nil {
			return 2, nil
		}
		var argv []string
		for range n {
			a, _ := br.ReadString('\n')
			argv = append(argv, strings.TrimSuffix(a, "\n"))
		}
		f.ran = append(f.ran, strings.Join(argv, " "))
		if argv[0] == f.hang {
			<-ctx.Done()
			return 0, ctx.Err()
		}
		code := f.ops[argv[0]](argv[1:], stdout, stderr)
		fmt.Fprintf(stdout, "%s %d\n", tok, code)
		fmt.Fprintf(stderr, "%s %d\n", tok, code)
	}
}

func (f *lockSession) RunFresh(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return 0, errors.New("no new connections here")
}
func (f *lockSession) Reset(string)   {}
func (f *lockSession) Release(string) {}

// Operations go through the held lock's session with their output and
// exit status; one cut off ends the session (and the lock with it), and
// what follows runs in a session of its own.
func TestLockSessionRunsOperations(t *testing.T) {
	ctx := context.Background()
	f := &lockSession{hang: "start", ops: map[string]func([]string, io.Writer, io.Writer) int{
		"realise": func(args []string, stdout, stderr io.Writer) int {
			fmt.Fprintf(stdout, "realised %s", strings.Join(args, ","))
			fmt.Fprintln(stderr, "warning: slow")
			return len(args)
		},
	}}
	l, _, err := lockHost(ctx, f, "web-1", "lock", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := NewPrivilege("", nil, false)
	p.hold("web-1", l)
	direct := &recorder{}
	var out, errs strings.Builder
	code, err := p.through(direct, []string{"realise", "a b", "c"})(ctx, "web-1", "cmd", nil, &out, &errs)
	if err != nil || code != 2 || out.String() != "realised a b,c" || errs.String() != "warning: slow\n" {
		t.Fatalf("realise: code %d, err %v, stdout %q, stderr %q", code, err, out.String(), errs.String())
	}
	if _, err := p.through(direct, []string{"realise", "two\nlines"})(ctx, "web-1", "cmd", nil, io.Discard, io.Discard); err != nil || len(direct.cmds) != 1 {
		t.Errorf("an argument with a newline: %v, direct commands %v; want it run on its own", err, direct.cmds)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := p.through(direct, []string{"start"})(cctx, "web-1", "cmd", nil, io.Discard, io.Discard); !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled operation: %v", err)
	}
	<-l.done // the lock's command was ended with it
	if code, err := p.through(direct, []string{"realise", "d"})(ctx, "web-1", "cmd2", nil, io.Discard, io.Discard); err != nil || code != 0 || len(direct.cmds) != 2 || direct.cmds[1] != "cmd2" {
		t.Errorf("after the lock's session ended: code %d, %v, direct commands %v", code, err, direct.cmds)
	}
	if want := []string{"realise a b c", "start"}; strings.Join(f.ran, "|") != strings.Join(want, "|") {
		t.Errorf("the session ran %q, want %q", f.ran, want)
	}
}

// recorder is a Remote that runs nothing and records what it was given.
type recorder struct{ cmds []string }

func (r *recorder) Run(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	r.cmds = append(r.cmds, cmd)
	return 0, nil
}
func (r *recorder) RunFresh(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return r.Run(ctx, name, cmd, stdin, stdout, stderr)
}
func (r *recorder) Reset(string)   {}
func (r *recorder) Release(string) {}
