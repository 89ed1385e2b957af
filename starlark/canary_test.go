package starlark

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestCanaryPolicyChecks runs the checks of the example policy against a
// fake runner and a real HTTP server on 127.0.0.1.
func TestCanaryPolicyChecks(t *testing.T) {
	var status atomic.Int32
	status.Store(http.StatusOK)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(int(status.Load()))
		fmt.Fprint(w, "database unreachable")
	}))
	defer srv.Close()
	host, portStr, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(portStr)

	var state atomic.Value
	state.Store("running")
	runner := &fakeRunner{reply: func(_ context.Context, _, cmd string) (string, string, int, error) {
		s := state.Load().(string)
		code := 0
		if s != "running" {
			code = 1
		}
		return s + "\n", "", code, nil
	}}
	sleeper := &fakeSleeper{}
	p, err := Load(context.Background(), "testdata/policy/canary/policy.star", nil,
		Env{Runner: runner, Sleep: sleeper.Sleep, HTTP: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	web := Instance{Name: "www-03", Host: host, Tags: []string{"web", "canary"}, Meta: map[string]any{"http_port": float64(port)}}

	if res := p.PreActivate(context.Background(), web); !res.OK {
		t.Errorf("pre_activate on a running host: %+v", res)
	}
	res := p.PostActivate(context.Background(), web)
	if !res.OK || !reflect.DeepEqual(res.Logs, []string{"www-03 is healthy"}) {
		t.Errorf("post_activate on a healthy host: %+v", res)
	}
	wantCalls := []string{"www-03: systemctl is-system-running", "www-03: systemctl is-system-running --wait"}
	if !reflect.DeepEqual(runner.calls, wantCalls) {
		t.Errorf("commands %q, want %q", runner.calls, wantCalls)
	}

	// An unhealthy web server: five attempts, four 2s pauses, then failure.
	status.Store(http.StatusServiceUnavailable)
	res = p.PostActivate(context.Background(), web)
	wantMsg := fmt.Sprintf("gave up after 5 attempts: http://%s:%d/health answered 503: database unreachable", host, port)
	if res.OK || res.Message != wantMsg {
		t.Errorf("post_activate on an unhealthy host: %+v\nwant message %q", res, wantMsg)
	}
	if want := []time.Duration{2 * time.Second, 2 * time.Second, 2 * time.Second, 2 * time.Second}; !reflect.DeepEqual(sleeper.delays, want) {
		t.Errorf("slept %v, want %v", sleeper.delays, want)
	}

	// A host in maintenance is skipped; a degraded system fails the
	// post-check; a database host needs no HTTP check.
	state.Store("maintenance")
	if res := p.PreActivate(context.Background(), web); res.OK || res.Message != "www-03 is maintenance before activation" {
		t.Errorf("pre_activate in maintenance: %+v", res)
	}
	state.Store("degraded")
	if res := p.PostActivate(context.Background(), web); res.OK || !strings.HasPrefix(res.Message, "gave up after 3 attempts: system is degraded") {
		t.Errorf("post_activate degraded: %+v", res)
	}
	state.Store("running")
	if res := p.PostActivate(context.Background(), Instance{Name: "db-1", Tags: []string{"db"}}); !res.OK {
		t.Errorf("post_activate on a db host: %+v", res)
	}
}
