package host

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// The owners' program prints "uid gid" for each user and group pair, as
// id and getent answer them here, and fails naming the first user or
// group the host does not have.
func TestKeyOwnersProgram(t *testing.T) {
	run := func(pairs ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command("sh", "-c", KeyOwnersCommand(pairs...))
		var out, errOut strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		if _, ok := err.(*exec.ExitError); err != nil && !ok {
			t.Fatal(err)
		}
		return out.String(), strings.TrimSpace(errOut.String()), cmd.ProcessState.ExitCode()
	}
	id := func(db, name string) string {
		t.Helper()
		out, err := exec.Command("getent", db, name).Output()
		if err != nil {
			t.Skipf("getent %s %s: %v", db, name, err)
		}
		f := strings.Split(strings.TrimSpace(string(out)), ":")
		if _, err := strconv.Atoi(f[2]); err != nil {
			t.Fatalf("getent %s %s: %q", db, name, out)
		}
		return f[2]
	}
	want := id("passwd", "root") + " " + id("group", "root") + "\n" + id("passwd", "nobody") + " " + id("group", "nogroup") + "\n"
	if out, errOut, code := run("root", "root", "nobody", "nogroup"); out != want || code != 0 {
		t.Errorf("got %q (exit %d, %s), want %q", out, code, errOut, want)
	}
	for _, tt := range []struct {
		pairs []string
		want  string
	}{
		{[]string{"root", "root", "nix-hive-no-user", "nix-hive-no-group"}, "no user nix-hive-no-user on the host"},
		{[]string{"root", "nix-hive-no-group", "nix-hive-no-user", "root"}, "no group nix-hive-no-group on the host"},
	} {
		if _, errOut, code := run(tt.pairs...); code != 3 || errOut != tt.want {
			t.Errorf("%q: exit %d, %q; want exit 3, %q", tt.pairs, code, errOut, tt.want)
		}
	}
}
