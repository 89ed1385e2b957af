package starlark

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeRunner answers ctx.run from a function and records every call.
type fakeRunner struct {
	mu    sync.Mutex
	calls []string // "instance: cmd"
	reply func(ctx context.Context, instance, cmd string) (string, string, int, error)
}

func (r *fakeRunner) Run(ctx context.Context, instance, cmd string) (string, string, int, error) {
	r.mu.Lock()
	r.calls = append(r.calls, instance+": "+cmd)
	r.mu.Unlock()
	return r.reply(ctx, instance, cmd)
}

// fakeSleeper records the delays it is asked for and returns at once.
type fakeSleeper struct {
	mu     sync.Mutex
	delays []time.Duration
}

func (s *fakeSleeper) Sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.delays = append(s.delays, d)
	s.mu.Unlock()
	return ctx.Err()
}

// mustLoad loads src; env's limits apply to the calls after loading (a
// loaded machine may take longer than a test's tight limit to load).
func mustLoad(t *testing.T, src string, env Env) *Policy {
	t.Helper()
	roomy := env
	roomy.CallTimeout = max(env.CallTimeout, time.Minute)
	p, err := Load(context.Background(), "hive.star", []byte(src), roomy)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	t.Cleanup(p.ev.stop)
	p.env = env
	return p
}

var www1 = Instance{Name: "www-1", System: "www", Host: "127.0.0.1", Tags: []string{"web", "canary"}, Meta: map[string]any{"port": float64(80)}}

// policyError asserts that err is an *Error and returns it.
func policyError(t *testing.T, err error) *Error {
	t.Helper()
	var perr *Error
	if !errors.As(err, &perr) {
		t.Fatalf("error %T (%v), want *Error", err, err)
	}
	return perr
}

func TestSyntaxErrorPosition(t *testing.T) {
	src := "def waves(instances):\n    return [[i for i in instances]\n\nmax_failures = 1\n"
	_, err := Load(context.Background(), "hive.star", []byte(src), Env{})
	perr := policyError(t, err)
	// The parser places the error after the unexpected token.
	if perr.File != "hive.star" || perr.Line != 4 || perr.Col != 13 {
		t.Errorf("error at %s:%d:%d, want hive.star:4:13: %v", perr.File, perr.Line, perr.Col, err)
	}
	if want := "hive.star:4:13: got identifier, want ']'"; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(context.Background(), "testdata/no-such-policy.star", nil, Env{})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("err = %v, want fs.ErrNotExist", err)
	}
}

// TestUnknownBuiltins checks that nothing outside the documented builtins
// is reachable, and that the error says where.
func TestUnknownBuiltins(t *testing.T) {
	tests := []struct {
		name, src, at, msg string
	}{
		{"open", "x = 1\ndata = open('x')\n", "hive.star:2:8", "undefined: open"},
		{"load", "load('os', 'system')\n", "hive.star:1:1", `load("os")`},
		{"exec", "def waves(instances):\n    return exec('ls')\n", "hive.star:2:12", "undefined: exec"},
		{"json", "def select(instances):\n    return json.decode('[]')\n", "hive.star:2:12", "undefined: json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(context.Background(), "hive.star", []byte(tt.src), Env{})
			perr := policyError(t, err)
			if !strings.HasPrefix(perr.Summary(), tt.at+":") || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q, want at %s containing %q", err, tt.at, tt.msg)
			}
		})
	}
}

func TestStepLimit(t *testing.T) {
	env := Env{MaxSteps: 100_000}
	t.Run("waves", func(t *testing.T) {
		p := mustLoad(t, "def waves(instances):\n    n = 0\n    while True:\n        n += 1\n", env)
		_, err := p.Waves(context.Background(), []Instance{www1})
		perr := policyError(t, err)
		// Where exactly the loop is stopped varies; it is within waves.
		if !errors.Is(err, ErrStepLimit) || perr.Func != "waves" || perr.Line < 1 || perr.Line > 4 {
			t.Errorf("err = %v, want ErrStepLimit inside waves", err)
		}
		if !strings.Contains(err.Error(), "waves(): policy exceeded 100000 execution steps (the limit; an endless loop?)") {
			t.Errorf("message does not explain the limit: %v", err)
		}
	})
	t.Run("toplevel", func(t *testing.T) {
		_, err := Load(context.Background(), "hive.star", []byte("x = 0\nwhile True:\n    pass\n"), env)
		if perr := policyError(t, err); !errors.Is(err, ErrStepLimit) || perr.Line < 1 || perr.Func != "" {
			t.Errorf("err = %v, want ErrStepLimit while loading", err)
		}
	})
	t.Run("check", func(t *testing.T) {
		p := mustLoad(t, "def post_activate(ctx):\n    for i in range(1000000000):\n        pass\n", env)
		res := p.PostActivate(context.Background(), www1)
		if res.OK || !errors.Is(res.Err, ErrStepLimit) || !strings.HasPrefix(res.Message, "hive.star:2:") {
			t.Errorf("result %+v, want a failure by ErrStepLimit at hive.star:2", res)
		}
	})
}

// TestTimeLimit: loops that call a builtin take few steps per second, so
// only the time limit can stop them.
func TestTimeLimit(t *testing.T) {
	env := Env{MaxSteps: 1 << 62, CallTimeout: 50 * time.Millisecond, CheckTimeout: 50 * time.Millisecond}
	t.Run("waves", func(t *testing.T) {
		p := mustLoad(t, "def waves(instances):\n    while True:\n        sleep(0)\n", env)
		_, err := p.Waves(context.Background(), []Instance{www1})
		perr := policyError(t, err)
		if !errors.Is(err, ErrTimeLimit) || perr.Func != "waves" || perr.Line < 1 || perr.Line > 3 {
			t.Errorf("err = %v, want ErrTimeLimit inside waves", err)
		}
		if !strings.Contains(err.Error(), "waves(): policy exceeded 50ms (the time limit) and was stopped") {
			t.Errorf("message does not explain the limit: %v", err)
		}
	})
	t.Run("check sleeping", func(t *testing.T) {
		p := mustLoad(t, "def pre_activate(ctx):\n    sleep(3600)\n", env)
		res := p.PreActivate(context.Background(), www1)
		if res.OK || !errors.Is(res.Err, ErrTimeLimit) || !strings.HasPrefix(res.Message, "hive.star:2:10: pre_activate(): policy exceeded 50ms (the time limit)") {
			t.Errorf("result %+v, want ErrTimeLimit at hive.star:2:10", res)
		}
	})
	t.Run("check running", func(t *testing.T) {
		runner := &fakeRunner{reply: func(ctx context.Context, _, _ string) (string, string, int, error) {
			<-ctx.Done()
			return "", "", 0, ctx.Err()
		}}
		env := env
		env.Runner = runner
		p := mustLoad(t, "def post_activate(ctx):\n    ctx.run('sleep 3600')\n", env)
		if res := p.PostActivate(context.Background(), www1); res.OK || !errors.Is(res.Err, ErrTimeLimit) {
			t.Errorf("result %+v, want ErrTimeLimit", res)
		}
	})
}

func TestRun(t *testing.T) {
	runner := &fakeRunner{reply: func(_ context.Context, instance, cmd string) (string, string, int, error) {
		switch cmd {
		case "systemctl is-failed 'my unit'; echo \"$HOME\"":
			return "active\n/root\n", "warning: x\n", 3, nil
		case "lost":
			return "", "", 0, errors.New("connection reset")
		}
		return "", "", 127, nil
	}}
	p := mustLoad(t, `
def post_activate(ctx):
    r = ctx.run("systemctl is-failed 'my unit'; echo \"$HOME\"")
    if (r.stdout, r.stderr, r.code) != ("active\n/root\n", "warning: x\n", 3):
        fail("got %r" % ((r.stdout, r.stderr, r.code),))
    if ctx.run("unknown").code != 127:
        fail("exit code lost")
    if ctx.instance.name == "lost":
        ctx.run("lost")
`, Env{Runner: runner})

	res := p.PostActivate(context.Background(), www1)
	if !res.OK {
		t.Fatalf("check failed: %+v", res)
	}
	want := []string{"www-1: systemctl is-failed 'my unit'; echo \"$HOME\"", "www-1: unknown"}
	if !reflect.DeepEqual(runner.calls, want) {
		t.Errorf("runner got %q, want %q", runner.calls, want)
	}

	// A transport error raises: the check fails with the cause and where.
	res = p.PostActivate(context.Background(), Instance{Name: "lost"})
	perr := policyError(t, res.Err)
	if res.OK || perr.Fail || perr.Line != 9 || !strings.Contains(res.Message, `run "lost" on lost: connection reset`) {
		t.Errorf("result %+v, want a transport failure at line 9", res)
	}
}

func TestRunTimeout(t *testing.T) {
	runner := &fakeRunner{reply: func(ctx context.Context, _, _ string) (string, string, int, error) {
		if _, ok := ctx.Deadline(); !ok {
			return "", "", 0, errors.New("no deadline")
		}
		<-ctx.Done()
		return "", "", 0, ctx.Err()
	}}
	p := mustLoad(t, "def pre_activate(ctx):\n    ctx.run('sleep 60', timeout = 0.01)\n", Env{Runner: runner})
	res := p.PreActivate(context.Background(), www1)
	if res.OK || !strings.Contains(res.Message, `run "sleep 60" on www-1: timed out`) || errors.Is(res.Err, ErrTimeLimit) {
		t.Errorf("result %+v, want ctx.run's own timeout", res)
	}
}

func TestHTTPGet(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "fine") })
	mux.HandleFunc("/busy", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "busy", http.StatusServiceUnavailable)
	})
	srv := httptest.NewServer(mux) // listens on 127.0.0.1
	defer srv.Close()
	closed := httptest.NewServer(mux)
	closed.Close()

	p := mustLoad(t, `
def post_activate(ctx):
    url = ctx.instance.meta["url"]
    r = http_get(url, timeout = 5)
    log("%d %s" % (r.status, r.body.strip()))
    if r.status != 200:
        fail("status %d" % r.status)
`, Env{HTTP: srv.Client()})
	tests := []struct {
		url  string
		ok   bool
		msg  string
		logs []string
	}{
		{srv.URL + "/ok", true, "", []string{"200 fine"}},
		{srv.URL + "/busy", false, "status 503", []string{"503 busy"}},
		{closed.URL + "/ok", false, "http_get: Get", nil},
		{"file:///etc/passwd", false, "only http:// and https:// URLs are allowed", nil},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			inst := Instance{Name: "www-1", Meta: map[string]any{"url": tt.url}}
			res := p.PostActivate(context.Background(), inst)
			if res.OK != tt.ok || !strings.Contains(res.Message, tt.msg) || !reflect.DeepEqual(res.Logs, tt.logs) {
				t.Errorf("result %+v, want OK=%v, message with %q, logs %q", res, tt.ok, tt.msg, tt.logs)
			}
		})
	}
}

func TestRetry(t *testing.T) {
	src := `
def post_activate(ctx):
    tries = [0]
    def attempt():
        tries[0] += 1
        if tries[0] <= ctx.instance.meta["failures"]:
            fail("not yet (%d)" % tries[0])
        return tries[0]
    n = retry(attempt, attempts = 4, delay = 0.5)
    log("succeeded on attempt %d" % n)

def pre_activate(ctx):
    retry(lambda: False, attempts = 2)
`
	tests := []struct {
		failures int
		ok       bool
		delays   []time.Duration
		msg      string
	}{
		{0, true, nil, ""},
		{2, true, []time.Duration{500 * time.Millisecond, 500 * time.Millisecond}, ""},
		{4, false, []time.Duration{500 * time.Millisecond, 500 * time.Millisecond, 500 * time.Millisecond}, "gave up after 4 attempts: not yet (4)"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.failures), func(t *testing.T) {
			sleeper := &fakeSleeper{}
			p := mustLoad(t, src, Env{Sleep: sleeper.Sleep})
			res := p.PostActivate(context.Background(), Instance{Name: "www-1", Meta: map[string]any{"failures": tt.failures}})
			if res.OK != tt.ok || res.Message != tt.msg {
				t.Errorf("result %+v, want OK=%v message %q", res, tt.ok, tt.msg)
			}
			if !reflect.DeepEqual(sleeper.delays, tt.delays) {
				t.Errorf("slept %v, want %v", sleeper.delays, tt.delays)
			}
			if attempts := len(res.Logs); tt.ok && !strings.HasPrefix(res.Logs[attempts-1], fmt.Sprintf("succeeded on attempt %d", tt.failures+1)) {
				t.Errorf("logs %q", res.Logs)
			}
		})
	}
	t.Run("returns False", func(t *testing.T) {
		sleeper := &fakeSleeper{}
		p := mustLoad(t, src, Env{Sleep: sleeper.Sleep})
		res := p.PreActivate(context.Background(), www1)
		if res.OK || res.Message != "gave up after 2 attempts: lambda returned False" || len(sleeper.delays) != 1 || sleeper.delays[0] != time.Second {
			t.Errorf("result %+v, slept %v; want failure after 2 attempts and one default 1s delay", res, sleeper.delays)
		}
	})
}

func TestFailInCheck(t *testing.T) {
	p := mustLoad(t, "def post_activate(ctx):\n    fail('%s: version %d not active' % (ctx.instance.name, 42))\n", Env{})
	res := p.PostActivate(context.Background(), www1)
	if res.OK || res.Message != "www-1: version 42 not active" {
		t.Fatalf("result %+v, want the fail() message verbatim", res)
	}
	perr := policyError(t, res.Err)
	if !perr.Fail || perr.Func != "post_activate" || perr.Line != 2 || perr.Col != 9 {
		t.Errorf("Err = %+v, want Fail at hive.star:2:9 in post_activate", perr)
	}
}

func TestCheckVerdicts(t *testing.T) {
	p := mustLoad(t, `
def pre_activate(ctx):
    return "web" not in ctx.instance.tags

def post_activate(ctx):
    return {}["missing"]
`, Env{})
	if res := p.PreActivate(context.Background(), Instance{Name: "db-1"}); !res.OK {
		t.Errorf("pre_activate returning True failed: %+v", res)
	}
	res := p.PreActivate(context.Background(), www1)
	if res.OK || res.Message != "hive.star:2:1: pre_activate(): returned False" {
		t.Errorf("pre_activate returning False: %+v", res)
	}
	res = p.PostActivate(context.Background(), www1)
	perr := policyError(t, res.Err)
	if res.OK || perr.Fail || !strings.HasPrefix(res.Message, "hive.star:6:14: post_activate(): key \"missing\" not in dict") || !strings.Contains(perr.Backtrace, "Traceback") {
		t.Errorf("runtime error in post_activate: %+v", res)
	}
}

func TestInstanceValue(t *testing.T) {
	p := mustLoad(t, `
def pre_activate(ctx):
    i = ctx.instance
    got = (str(i), type(i), i.name, i.system, i.host, i.store, i.jump, i.tags, i.meta, dir(i))
    want = ('instance("www-1")', "instance", "www-1", "www", "127.0.0.1", "", "", ("web", "canary"),
            {"port": 80}, ["host", "jump", "meta", "name", "store", "system", "tags"])
    if got != want:
        fail("got %r" % (got,))
    return {i: 1}[i] == 1 and i == i and hasattr(i, "name") and not hasattr(i, "user")
`, Env{})
	if res := p.PreActivate(context.Background(), www1); !res.OK {
		t.Errorf("%+v", res)
	}
}

func TestLogAndPrint(t *testing.T) {
	var mu sync.Mutex
	var got []string
	env := Env{Log: func(instance, msg string) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, instance+"|"+msg)
	}}
	p := mustLoad(t, `
log("loading")
def waves(instances):
    print("planning", len(instances))
    return [instances]
def post_activate(ctx):
    log(ctx.instance.name)
    log(42)
`, env)
	if _, err := p.Waves(context.Background(), []Instance{www1}); err != nil {
		t.Fatal(err)
	}
	res := p.PostActivate(context.Background(), www1)
	want := []string{"|loading", "|planning 1", "www-1|www-1", "www-1|42"}
	if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(res.Logs, []string{"www-1", "42"}) {
		t.Errorf("Log got %q, want %q; CheckResult.Logs %q", got, want, res.Logs)
	}

	// A chatty check keeps its first lines in the result, all in the log.
	got = nil
	p = mustLoad(t, "def pre_activate(ctx):\n    for i in range(1500):\n        log(i)\n", env)
	res = p.PreActivate(context.Background(), www1)
	if len(got) != 1500 || len(res.Logs) != maxLogs+1 || res.Logs[maxLogs-1] != "999" {
		t.Errorf("%d lines logged, %d kept (last %q)", len(got), len(res.Logs), res.Logs[len(res.Logs)-1])
	}
}

// TestCancel: cancelling the caller's context ends a check that is blocked
// in ctx.run, and the result says it was cancelled, not that it failed.
func TestCancel(t *testing.T) {
	started := make(chan struct{})
	runner := &fakeRunner{reply: func(ctx context.Context, _, _ string) (string, string, int, error) {
		close(started)
		<-ctx.Done()
		return "", "", 0, ctx.Err()
	}}
	p := mustLoad(t, "def post_activate(ctx):\n    ctx.run('sleep 3600')\n", Env{Runner: runner, CheckTimeout: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-started
		cancel()
	}()
	res := p.PostActivate(ctx, www1)
	if res.OK || !errors.Is(res.Err, context.Canceled) || !strings.Contains(res.Message, "cancelled") {
		t.Errorf("result %+v, want cancelled", res)
	}

	// A context that is already over stops select and waves before they run.
	p = mustLoad(t, "def select(instances):\n    return instances\n", Env{})
	if _, err := p.Select(ctx, []Instance{www1}); !errors.Is(err, context.Canceled) {
		t.Errorf("Select with a cancelled context: %v", err)
	}
}

func TestDefaultPolicy(t *testing.T) {
	for name, p := range map[string]*Policy{"Default": Default(Env{}), "empty file": mustLoad(t, "", Env{})} {
		in := []Instance{www1, {Name: "db-1"}}
		sel, err := p.Select(context.Background(), in)
		if err != nil || !reflect.DeepEqual(sel, in) {
			t.Errorf("%s: Select = %v, %v", name, sel, err)
		}
		waves, err := p.Waves(context.Background(), in)
		if err != nil || len(waves) != 1 || !reflect.DeepEqual(waves[0].Instances, in) || waves[0].Canary {
			t.Errorf("%s: Waves = %+v, %v", name, waves, err)
		}
		if waves, err := p.Waves(context.Background(), nil); err != nil || len(waves) != 0 {
			t.Errorf("%s: Waves(nil) = %+v, %v", name, waves, err)
		}
		if res := p.PostActivate(context.Background(), www1); !res.OK {
			t.Errorf("%s: PostActivate = %+v", name, res)
		}
		if p.OnFailure != OnFailureStop || p.MaxFailures != (FailureBudget{Wave: Unlimited, Total: 0}) {
			t.Errorf("%s: on_failure %q, budget %+v", name, p.OnFailure, p.MaxFailures)
		}
	}
}

func TestShouldStop(t *testing.T) {
	canary, wave := Wave{Canary: true}, Wave{}
	tests := []struct {
		budget        FailureBudget
		w             Wave
		inWave, total int
		stop          bool
	}{
		{FailureBudget{Unlimited, 0}, wave, 0, 0, false},
		{FailureBudget{Unlimited, 0}, wave, 1, 1, true},
		{FailureBudget{Unlimited, Unlimited}, wave, 9, 99, false},
		{FailureBudget{Unlimited, Unlimited}, canary, 1, 1, true},
		{FailureBudget{1, 2}, wave, 1, 2, false},
		{FailureBudget{1, 2}, wave, 2, 2, true},
		{FailureBudget{1, 2}, wave, 1, 3, true},
		{FailureBudget{1, 2}, canary, 0, 2, false},
	}
	for _, tt := range tests {
		p := &Policy{MaxFailures: tt.budget}
		if got := p.ShouldStop(tt.w, tt.inWave, tt.total); got != tt.stop {
			t.Errorf("budget %+v, canary %v, failures %d/%d: ShouldStop = %v, want %v", tt.budget, tt.w.Canary, tt.inWave, tt.total, got, tt.stop)
		}
	}
}

// TestConcurrentChecks runs the checks of many hosts at once on one policy,
// as the executor does (run with -race).
func TestConcurrentChecks(t *testing.T) {
	runner := &fakeRunner{reply: func(_ context.Context, instance, _ string) (string, string, int, error) {
		return instance + "\n", "", 0, nil
	}}
	p := mustLoad(t, `
SEEN = {}
def post_activate(ctx):
    r = ctx.run("hostname")
    if r.stdout.strip() != ctx.instance.name:
        fail("crossed wires: %s got %s" % (ctx.instance.name, r.stdout))
    return sorted([ctx.instance] + [ctx.instance])
`, Env{Runner: runner})
	in := fleet(t)
	results := make([]CheckResult, len(in))
	var wg sync.WaitGroup
	for i := range in {
		wg.Go(func() { results[i] = p.PostActivate(context.Background(), in[i]) })
	}
	wg.Wait()
	for i, res := range results {
		if !res.OK {
			t.Errorf("%s: %+v", in[i].Name, res)
		}
	}
}

// TestNoGoroutineLeak runs calls that finish, fail, time out and are
// cancelled, and checks that every goroutine they started has ended.
func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	runner := &fakeRunner{reply: func(ctx context.Context, _, cmd string) (string, string, int, error) {
		if cmd == "block" {
			<-ctx.Done()
			return "", "", 0, ctx.Err()
		}
		return "", "", 0, nil
	}}
	client := srv.Client()
	src := `
def waves(instances):
    while True:
        sleep(0)
def pre_activate(ctx):
    http_get(ctx.instance.meta["url"])
    ctx.run("true")
def post_activate(ctx):
    ctx.run("block")
`
	// Calls that must hit their limit get a short one; loading the file and
	// pre_activate, which must finish, a limit no loaded machine reaches.
	roomy := mustLoad(t, src, Env{Runner: runner, HTTP: client, MaxSteps: 1 << 62, CheckTimeout: time.Minute})
	p := mustLoad(t, src, Env{Runner: runner, HTTP: client, MaxSteps: 1 << 62, CallTimeout: 20 * time.Millisecond, CheckTimeout: 20 * time.Millisecond})
	inst := Instance{Name: "www-1", Meta: map[string]any{"url": srv.URL}}

	for range 5 {
		if _, err := p.Waves(context.Background(), []Instance{inst}); !errors.Is(err, ErrTimeLimit) {
			t.Fatalf("Waves: %v", err)
		}
		if res := roomy.PreActivate(context.Background(), inst); !res.OK {
			t.Fatalf("PreActivate: %+v", res)
		}
		if res := p.PostActivate(context.Background(), inst); !errors.Is(res.Err, ErrTimeLimit) {
			t.Fatalf("PostActivate: %+v", res)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if res := p.PostActivate(ctx, inst); !errors.Is(res.Err, context.Canceled) {
			t.Fatalf("PostActivate cancelled: %+v", res)
		}
	}
	// Closing the server and the client's connections ends their goroutines;
	// stopping the evaluators ends the goroutines that talk to them.
	srv.Close()
	client.CloseIdleConnections()
	roomy.ev.stop()
	p.ev.stop()

	// Goroutines that have returned may take a moment to be accounted
	// (bounded against a hang, not a speed assertion).
	after := runtime.NumGoroutine()
	for deadline := time.Now().Add(time.Minute); after > before && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		after = runtime.NumGoroutine()
	}
	if after > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before, %d after:\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}

// TestAbandonRunnerIgnoringContext: a Runner that does not honour ctx
// cannot hold a check past its time limit for more than cancelGrace.
func TestAbandonRunnerIgnoringContext(t *testing.T) {
	release := make(chan struct{})
	defer close(release) // lets the abandoned goroutine finish
	runner := &fakeRunner{reply: func(context.Context, string, string) (string, string, int, error) {
		<-release
		return "", "", 0, nil
	}}
	p := mustLoad(t, "def post_activate(ctx):\n    ctx.run('hang')\n", Env{Runner: runner, CheckTimeout: 10 * time.Millisecond})
	res := p.PostActivate(context.Background(), www1)
	if res.OK || !errors.Is(res.Err, ErrTimeLimit) || !strings.Contains(res.Message, "abandoned") {
		t.Errorf("result %+v, want ErrTimeLimit and the builtin abandoned", res)
	}
}
