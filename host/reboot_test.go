package host

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// sameBoot is a host that answers every query from the boot it was asked
// to leave, or not at all.
type sameBoot struct {
	recorder
	err error // each Run's error, nil to answer
}

func (h *sameBoot) Run(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if h.err != nil {
		return -1, h.err
	}
	io.WriteString(stdout, "active=/nix/store/a-sys\nboot=b00t\nrebootmark=m1\n")
	return 0, nil
}

// A host that never went down is named as one that did not reboot, not
// as one that did not come back with "last: <nil>"; one that stays
// silent keeps the connection's error.
func TestAwaitRebootSaysWhyItGaveUp(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		want string
	}{
		{"it still answers from the same boot", nil, "did not reboot within 10ms: it still answers from the same boot (boot id b00t, the reboot's mark still in /run)"},
		{"it stays silent", errors.New("dial: no route to host"), "did not come back from the reboot within 10ms (last: dial: no route to host)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, err := AwaitReboot(context.Background(), &sameBoot{err: c.err}, "web-1", "m1", "b00t", 10*time.Millisecond, time.Second)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err = %v, want %q", err, c.want)
			}
		})
	}
}
