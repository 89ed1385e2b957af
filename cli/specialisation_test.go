package cli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A specialisation is activated as nixos-rebuild --specialisation does:
// the system profile gets the system, /run/current-system its
// specialisation's toplevel. Chosen per deploy (--specialisation) or
// per instance in the hive, it is recorded on the host and in
// hive.state, a redeploy finds it unchanged, and status shows it. A
// specialisation the system lacks, an invalid name, or --goal boot stop
// before any host changes.
func TestDeploySpecialisation(t *testing.T) {
	f := newFaultLab(t, 2)
	v1 := f.baseline()
	f.variants(map[string]string{
		"app-1": `version = "2"; specialisations.gpu = { etc."gpu" = "on"; };`,
		"app-2": `version = "2"; specialisations.gpu = { etc."gpu" = "on"; };`,
	})
	sys := f.build()
	spec := func(h string) string {
		p, err := filepath.EvalSymlinks(filepath.Join(sys[h], "specialisation", "gpu"))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	unchanged := func(what string) {
		t.Helper()
		for _, h := range []string{"app-1", "app-2"} {
			if got := f.system(h); got.active != v1[h] || got.profile != v1[h] {
				t.Errorf("%s: %s changed: %+v", what, h, got)
			}
		}
	}

	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"a specialisation the system lacks", []string{"--specialisation", "nope"}, 2, `instance "app-1": system ` + sys["app-1"] + ` has no specialisation "nope" here`},
		{"a name that is no name", []string{"--specialisation", "../gpu"}, 2, `--specialisation "../gpu" is not a specialisation name`},
		{"--goal boot", []string{"--specialisation", "gpu", "--goal", "boot"}, 2, "--specialisation needs --goal switch or test"},
	} {
		code, _, errOut := f.run(append([]string{"deploy", "--no", "build"}, c.args...)...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("%s: exit %d, want %d and %q in:\n%s", c.name, code, c.code, c.want, errOut)
		}
		unchanged(c.name)
	}

	// Per deploy.
	code, out, _ := f.run("deploy", "--no", "build", "--specialisation", "gpu", "app-1")
	if code != 0 {
		t.Fatalf("deploy --specialisation gpu: exit %d", code)
	}
	summaryHas(t, out, "app-1", " ok ")
	if got := f.system("app-1"); got.active != spec("app-1") || got.profile != sys["app-1"] {
		t.Errorf("app-1 runs %+v, want active %s, profile %s", got, spec("app-1"), sys["app-1"])
	}
	if b, _ := os.ReadFile(f.lab.Host("app-1").Path("/run/current-system/etc/gpu")); string(b) != "on" {
		t.Errorf("the specialisation's etc/gpu: %q", b)
	}
	if l := f.lastActivation("app-1"); !strings.HasSuffix(l, " switch "+sys["app-1"]+" ok gpu") {
		t.Errorf("the host's record: %q", l)
	}
	if rec := f.state().Instances["app-1"]; rec.Specialisation != "gpu" || rec.OutPath != sys["app-1"] {
		t.Errorf("hive.state: %+v", rec)
	}
	code, out, _ = f.run("deploy", "--no", "build", "--specialisation", "gpu", "app-1")
	if code != 0 {
		t.Fatalf("again: exit %d", code)
	}
	summaryHas(t, out, "app-1", "unchanged")
	// status knows it from the host's record, the hive not saying it.
	code, out, _ = f.run("status", "app-1")
	if code != 0 || !strings.Contains(out, spec("app-1")+" (specialisation gpu)") {
		t.Errorf("status: exit %d:\n%s", code, out)
	}

	// Per instance, in the hive.
	b, err := os.ReadFile(filepath.Join(f.dir, "hive.nix"))
	if err != nil {
		t.Fatal(err)
	}
	hive := strings.Replace(string(b), "v // { system = n; }", `v // { system = n; } // (if n == "app-2" then { specialisation = "gpu"; } else { })`, 1)
	f.write("hive.nix", hive)
	code, out, _ = f.run("deploy", "--no", "build", "app-2")
	if code != 0 {
		t.Fatalf("deploy with the hive's specialisation: exit %d", code)
	}
	summaryHas(t, out, "app-2", " ok ")
	if got := f.system("app-2"); got.active != spec("app-2") || got.profile != sys["app-2"] {
		t.Errorf("app-2 runs %+v, want active %s", got, spec("app-2"))
	}
	code, out, _ = f.run("status")
	if code != 0 || !strings.Contains(out, spec("app-2")+" (specialisation gpu)") {
		t.Errorf("status: exit %d:\n%s", code, out)
	}
	f.write("hive.nix", strings.Replace(hive, `specialisation = "gpu"`, `specialisation = "-rf"`, 1))
	if code, _, errOut := f.run("deploy", "--no", "build", "app-2"); code != 2 || !strings.Contains(errOut, `instance "app-2": attribute specialisation: "-rf" is not a specialisation name`) {
		t.Errorf("an invalid specialisation in the hive: exit %d:\n%s", code, errOut)
	}
}
