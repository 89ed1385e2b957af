package host

import (
	"bytes"
	"compress/gzip"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/shell"
)

// hostPrograms are every shell program this package sends to hosts, as
// written: the agent's operations, those run as the login, and the job.
func hostPrograms() map[string]string {
	out := map[string]string{"job.sh": jobScript}
	for prog, op := range agentOps {
		out[op] = prog
	}
	for name, prog := range loginPrograms {
		out[name] = prog
	}
	return out
}

// TestProgramsCompact: compact may drop comment lines and indentation only
// because no program has a quoted string or here-document spanning lines;
// a program that grows one fails here rather than on a host. The compacted
// program must still parse, and be much smaller.
func TestProgramsCompact(t *testing.T) {
	for name, prog := range hostPrograms() {
		t.Run(name, func(t *testing.T) {
			if line, ok := multilineQuote(prog); ok {
				t.Fatalf("a quoted string spans lines from line %d: compact would change it", line)
			}
			if strings.Contains(prog, "<<") {
				t.Fatal("a here-document: compact would change it")
			}
			c := compact(prog)
			if sh, err := exec.LookPath("sh"); err == nil {
				if out, err := exec.Command(sh, "-n", "-c", c).CombinedOutput(); err != nil {
					t.Fatalf("compacted program does not parse: %v\n%s", err, out)
				}
			}
			if strings.Count(c, "\n") > strings.Count(prog, "\n") || len(c) > len(prog) {
				t.Errorf("compact grew the program: %d -> %d bytes", len(prog), len(c))
			}
		})
	}
	if full, c := len(jobScript), len(compactJob()); c > full*2/3 {
		t.Errorf("job script compacted from %d to %d bytes only", full, c)
	}
}

func TestJobPayload(t *testing.T) {
	if jobPayload(false) != compact(jobScript) {
		t.Error("plain payload is not the compacted script")
	}
	r, err := gzip.NewReader(strings.NewReader(jobPayload(true)))
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(b, []byte(compact(jobScript))) {
		t.Fatalf("gzipped payload does not unpack to the compacted script: %v", err)
	}
	if g, p := len(jobPayload(true)), len(jobPayload(false)); g > p/2 {
		t.Errorf("gzip saves little: %d -> %d bytes", p, g)
	}
}

// multilineQuote reports the line where a single- or double-quoted string
// that crosses a newline begins, reading prog as sh does: backslash
// escapes outside single quotes, comments from a # that starts a word.
func multilineQuote(prog string) (int, bool) {
	line, start := 1, 0
	var quote byte
	prev := byte('\n')
	for i := 0; i < len(prog); i++ {
		c := prog[i]
		switch {
		case c == '\n':
			if quote != 0 {
				return start, true
			}
			line++
		case quote == '\'':
			if c == '\'' {
				quote = 0
			}
		case c == '\\':
			i++
			if i < len(prog) && prog[i] == '\n' {
				line++
			}
		case quote == '"':
			if c == '"' {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote, start = c, line
		case c == '#' && strings.IndexByte(" \t\n;(|&", prev) >= 0:
			for i < len(prog) && prog[i] != '\n' {
				i++
			}
			i--
		}
		prev = c
	}
	return 0, false
}

func TestMultilineQuote(t *testing.T) {
	for _, tc := range []struct {
		prog string
		want bool
	}{
		{"echo 'a'\necho \"b\"\n", false},
		{"echo 'a\nb'\n", true},
		{"echo \"a\nb\"\n", true},
		{"echo it\\'s\n", false},
		{"# it's a comment\necho x\n", false},
		{"echo a#'b\n'", true},
		{"echo \"$(cat 'x')\"\n", false},
	} {
		if _, got := multilineQuote(tc.prog); got != tc.want {
			t.Errorf("multilineQuote(%q) = %v, want %v", tc.prog, got, tc.want)
		}
	}
}

func TestRemoteCommandsQuote(t *testing.T) {
	evil := "/nix/store/x-it's $(rm -rf /)"
	sudo := escalation{prefix: "sudo"}
	cmd := program(startProgram, true, "deploy", sudo, "id", "", "1", "gzip", string(GoalSwitch), evil, "30", "60")
	if !strings.Contains(cmd, `'/nix/store/x-it'\''s $(rm -rf /)'`) {
		t.Errorf("path not quoted as one word:\n%s", cmd)
	}
	if !strings.HasPrefix(cmd, "sudo sh -c ") {
		t.Errorf("no privilege command for a non-root user:\n%s", cmd)
	}
	if c := program(confirmProgram, true, "root", sudo, "id"); strings.Contains(c, "sudo") {
		t.Errorf("root needs no sudo:\n%s", c)
	}
	if !strings.Contains(cmd, shell.Quote(compact(startProgram))) || strings.Contains(cmd, "switch-to-configuration") {
		t.Errorf("the start program travels as one quoted word, the job script on stdin only:\n%s", cmd)
	}
}
