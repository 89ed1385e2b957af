package starlark

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// fleet loads testdata/fleet.json: www-01..www-12 (tag web, www-03 also
// canary) and db-1..db-4 (tag db), with meta decoded as JSON would be.
func fleet(t testing.TB) []Instance {
	t.Helper()
	data, err := os.ReadFile("testdata/fleet.json")
	if err != nil {
		t.Fatal(err)
	}
	var in []Instance
	if err := json.Unmarshal(data, &in); err != nil {
		t.Fatalf("decode fleet: %v", err)
	}
	return in
}

// want is a case's want.json.
type want struct {
	OnFailure   *FailureAction `json:"on_failure"`
	MaxFailures *FailureBudget `json:"max_failures"`
	// RollbackSucceeded is rollback_succeeded; absent means False.
	RollbackSucceeded bool       `json:"rollback_succeeded"`
	Select            []string   `json:"select"`
	Waves             [][]string `json:"waves"`
	Canary            []bool     `json:"canary"`
	Logs              []string   `json:"logs"` // what log() and print() said, in order
	Error             *struct {
		In       string   `json:"in"` // load, select or waves
		At       string   `json:"at"` // suffix of file:line:col
		Fail     bool     `json:"fail"`
		Contains []string `json:"contains"` // substrings of Error()
	} `json:"error"`
}

func names(in []Instance) []string {
	out := make([]string, len(in))
	for i, inst := range in {
		out[i] = inst.Name
	}
	return out
}

// TestPolicies runs every testdata/policy/<case>/policy.star over the fleet
// through Load, Select and Waves and compares with want.json.
func TestPolicies(t *testing.T) {
	dirs, err := filepath.Glob("testdata/policy/*")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no cases: %v", err)
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			var w want
			data, err := os.ReadFile(filepath.Join(dir, "want.json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(data, &w); err != nil {
				t.Fatalf("want.json: %v", err)
			}
			stage, err := planCase(t, filepath.Join(dir, "policy.star"), &w)
			if w.Error == nil {
				if err != nil {
					t.Fatalf("%s: %v", stage, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want one in %s", w.Error.In)
			}
			if stage != w.Error.In {
				t.Errorf("error in %s, want in %s: %v", stage, w.Error.In, err)
			}
			t.Logf("%s error:\n%v", stage, err)
			var perr *Error
			if !errors.As(err, &perr) {
				t.Fatalf("error is %T, want *Error: %v", err, err)
			}
			if at := perr.Summary(); !strings.Contains(at, w.Error.At+":") {
				t.Errorf("error at %q, want at %s", at, w.Error.At)
			}
			if perr.Fail != w.Error.Fail {
				t.Errorf("Fail = %v, want %v", perr.Fail, w.Error.Fail)
			}
			for _, s := range w.Error.Contains {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error lacks %q:\n%v", s, err)
				}
			}
		})
	}
}

// planCase does what `nix-hive plan` does and checks the results against
// w as it goes; it returns the stage that failed and the error.
func planCase(t *testing.T, file string, w *want) (string, error) {
	ctx := context.Background()
	var logs []string
	p, err := Load(ctx, file, nil, Env{Log: func(instance, msg string) { logs = append(logs, msg) }})
	if err != nil {
		return "load", err
	}
	t.Cleanup(p.ev.stop)
	if w.OnFailure != nil && p.OnFailure != *w.OnFailure {
		t.Errorf("OnFailure = %q, want %q", p.OnFailure, *w.OnFailure)
	}
	if p.RollbackSucceeded != w.RollbackSucceeded {
		t.Errorf("RollbackSucceeded = %v, want %v", p.RollbackSucceeded, w.RollbackSucceeded)
	}
	if w.MaxFailures != nil && p.MaxFailures != *w.MaxFailures {
		t.Errorf("MaxFailures = %+v, want %+v", p.MaxFailures, *w.MaxFailures)
	}
	sel, err := p.Select(ctx, fleet(t))
	if err != nil {
		return "select", err
	}
	if w.Select != nil && !reflect.DeepEqual(names(sel), w.Select) {
		t.Errorf("Select = %q\nwant %q", names(sel), w.Select)
	}
	waves, err := p.Waves(ctx, sel)
	if err != nil {
		return "waves", err
	}
	var got [][]string
	var canary []bool
	for _, wave := range waves {
		got = append(got, names(wave.Instances))
		canary = append(canary, wave.Canary)
	}
	if w.Waves != nil && !reflect.DeepEqual(got, w.Waves) {
		t.Errorf("Waves = %q\nwant %q", got, w.Waves)
	}
	if w.Canary != nil && !reflect.DeepEqual(canary, w.Canary) {
		t.Errorf("canary waves = %v, want %v", canary, w.Canary)
	}
	if !slices.Equal(logs, w.Logs) {
		t.Errorf("logs = %q, want %q", logs, w.Logs)
	}
	return "", nil
}
