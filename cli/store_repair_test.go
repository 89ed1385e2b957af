package cli_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A store's copy of a closure that was changed there (its content no
// longer matches its hash), or that arrived without the hive's signature,
// is refused by the consumer that substitutes it; the deploy says which
// of the two happened, on which store, removes the bad copy from the
// store, and the next deploy pushes a good one.
func testFaultBadStoreCopy(t *testing.T) {
	s := newSeed(t)
	if code, _, _ := s.run("deploy", "portico", "www-1", "www-2"); code != 0 {
		t.Fatalf("deploy: exit %d", code)
	}
	portico := s.lab.Host("portico")

	// The content of version 2 is changed on portico after it was pushed.
	s.edit(`toplevel = testSystem { name = "www"; };`, `toplevel = testSystem { name = "www"; version = "2"; };`)
	if code, _, _ := s.run("deploy", "www-1"); code != 0 {
		t.Fatalf("deploy www-1: exit %d", code)
	}
	v2 := s.state().Systems["www"].OutPath
	tamper(t, portico.Path(v2+"/nixos-version"), "2, changed on the store\n")
	code, out, errOut := s.run("deploy", "www-2")
	if code != 1 || !strings.Contains(out, "does not match its hash") || !strings.Contains(out, "portico") ||
		strings.Contains(out+errOut, "--trust-hive-key") {
		t.Errorf("deploy www-2 from a changed copy: exit %d; want 1, the copy on portico named as not matching its hash, no word of --trust-hive-key", code)
	}
	if s.has("portico", v2) {
		t.Errorf("the changed copy of %s is still on portico", v2)
	}
	if s.current("www-2") == v2 {
		t.Fatalf("www-2 activated the changed copy")
	}
	if code, _, _ := s.run("deploy", "www-2"); code != 0 || s.current("www-2") != v2 {
		t.Fatalf("the next deploy: exit %d, www-2 runs %s", code, s.current("www-2"))
	}
	if out, err := portico.Exec(t.Context(), "nix-store", "--verify-path", v2); err != nil {
		t.Errorf("portico's new copy of %s does not verify: %v %s", v2, err, out)
	}

	// Version 3 reaches portico without the hive's signature (imported by
	// hand), and www-2 is told to trust the hive key.
	s.edit(`version = "2";`, `version = "3";`)
	if code, _, _ := s.run("build"); code != 0 {
		t.Fatal("build failed")
	}
	v3 := s.state().Systems["www"].OutPath
	export, err := exec.Command("nix-store", "--export", v3).Output()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(portico.Path("/root/v3.export"), export, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := portico.Exec(t.Context(), "sh", "-c", "nix-store --import < /root/v3.export"); err != nil {
		t.Fatalf("import on portico: %v %s", err, out)
	}
	code, out, errOut = s.run("deploy", "--no", "build", "--trust-hive-key", "www-2")
	if code != 1 || !strings.Contains(out, "not signed by the hive key") || !strings.Contains(out, "portico") ||
		strings.Contains(out+errOut, "pass --trust-hive-key") {
		t.Errorf("deploy www-2 from an unsigned copy with --trust-hive-key: exit %d; want 1, the copy on portico named as unsigned, and no advice to pass the flag it was given", code)
	}
	if s.has("portico", v3) {
		t.Errorf("the unsigned copy of %s is still on portico", v3)
	}
	if code, _, _ := s.run("deploy", "--no", "build", "--trust-hive-key", "www-2"); code != 0 || s.current("www-2") != v3 {
		t.Fatalf("the next deploy: exit %d, www-2 runs %s", code, s.current("www-2"))
	}
	addFaultRow(faultRow{fault: "changed or unsigned copy on a store", exit: code, outcome: "refused, removed, pushed again next deploy",
		hosts: "www-2 " + version(s.current("www-2")), badExit: code == 0})
}

// tamper rewrites a file of a store path in place, as someone with root
// on the store might.
func tamper(t *testing.T, file, text string) {
	t.Helper()
	dir := filepath.Dir(file)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(text), 0o444); err != nil {
		t.Fatal(err)
	}
}
