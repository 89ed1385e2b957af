package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/testenv"
)

// scratchNetns makes an empty network namespace that the test ends by
// deleting, where it may change routes without touching this machine's.
func scratchNetns(t *testing.T) string {
	t.Helper()
	if err := Check(); err != nil {
		testenv.Missing(t, err.Error())
	}
	ctx := t.Context()
	name := fmt.Sprintf("nhlab-test-%d", os.Getpid())
	unlock, err := lockWait(ctx, filepath.Join(lockDir, "netns.lock"))
	if err != nil {
		t.Fatal(err)
	}
	err = runIP(ctx, "", "netns", "add", name)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := runIP(context.Background(), "", "netns", "del", name); err != nil {
			t.Error(err)
		}
	})
	return name
}

func ipLines(t *testing.T, netns string, lines ...string) {
	t.Helper()
	if err := runIPBatch(t.Context(), netns, lines); err != nil {
		t.Fatal(err)
	}
}

// A lab starts only where its veth addresses lead nowhere without it,
// shown in a namespace whose routes lead "out" through a veth whose other
// end is in the same namespace: with no route of the lab's, the
// default one takes them; another route for the whole range keeps the
// lab's out; a more specific one goes around it.
func TestFence(t *testing.T) {
	ctx := t.Context()
	ns := scratchNetns(t)
	ipLines(t, ns, "link set lo up", "link add out0 type veth peer name out1", "addr add 192.0.2.9/24 dev out0", "link set out0 up",
		"route add default via 192.0.2.1")

	if err := checkUnroutable(ctx, ns, []string{"198.18.7.1"}); err == nil || !strings.Contains(err.Error(), "198.18.7.1 via 192.0.2.1 dev out0") {
		t.Errorf("no fence: %v; want an error naming the route out", err)
	}

	ipLines(t, ns, "route add 198.18.0.0/16 dev out0")
	if err := fenceLabRange(ctx, ns); err == nil || !strings.Contains(err.Error(), "198.18.0.0/16 dev out0") {
		t.Errorf("fence over another route for the range: %v; want an error naming that route", err)
	}
	ipLines(t, ns, "route del 198.18.0.0/16 dev out0")

	// Twice, as a second lab finds the first's.
	for range 2 {
		if err := fenceLabRange(ctx, ns); err != nil {
			t.Fatalf("fence: %v", err)
		}
	}
	if err := checkUnroutable(ctx, ns, []string{"198.18.7.1", "198.18.7.2", "198.18.7.6"}); err != nil {
		t.Errorf("behind the fence: %v", err)
	}

	ipLines(t, ns, "route add 198.18.7.0/30 via 192.0.2.1")
	if err := checkUnroutable(ctx, ns, []string{"198.18.7.6", "198.18.7.1"}); err == nil || !strings.Contains(err.Error(), "198.18.7.1 via 192.0.2.1 dev out0") {
		t.Errorf("a route around the fence: %v; want an error naming it", err)
	}
}
