package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"syscall"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/plan"
	"github.com/nix-hive/nix-hive/transport"
)

// Local runs an instance's commands on this machine, without SSH: the
// host of apply-local. The programs are those a deploy runs over SSH, so
// the lock, the detached job, magic rollback and the policy's checks work
// as they do remotely.
type Local struct{}

// Run implements Remote with `sh -c cmd`.
func (Local) Run(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	c := exec.CommandContext(ctx, "sh", "-c", cmd)
	c.Stdin, c.Stdout, c.Stderr = stdin, stdout, stderr
	// Its own process group, so that Ctrl-C on the terminal reaches
	// nix-hive alone, which decides what to stop, as it does for the
	// remote sessions a terminal never reaches.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err := c.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), nil
	case err != nil:
		return -1, fmt.Errorf("run on this machine: %w", err)
	}
	return 0, nil
}

// RunFresh implements Remote: here every command is a fresh start.
func (l Local) RunFresh(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return l.Run(ctx, name, cmd, stdin, stdout, stderr)
}

// Reset implements Remote; there is no connection.
func (Local) Reset(string) {}

// Release implements Remote: there is no connection to let go.
func (Local) Release(string) {}

// SFTP implements keys.Host: there is no sftp server here, and keys take
// the shell's way, which gives them the same guarantees.
func (Local) SFTP(ctx context.Context, name string) (*transport.SFTP, error) {
	return nil, errors.New("this machine: no sftp subsystem for a local apply")
}

// localCopier copies nothing: apply-local built the closure in this
// machine's store, which is the host's.
type localCopier struct{}

func (localCopier) Copy(ctx context.Context, dest string, paths []string) error { return nil }

// ThisInstance is the instance of inv this machine is: the one named
// name, else the one whose name or host is this machine's hostname (or
// its first label).
func ThisInstance(inv *eval.Inventory, name string) (string, error) {
	if name != "" {
		if inv.Instances[name] == nil {
			return "", inv.NoSuchInstance(name)
		}
		return name, nil
	}
	host, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("which instance is this machine: %w (name it with --instance)", err)
	}
	short, _, _ := strings.Cut(host, ".")
	var found []string
	for n, in := range inv.Instances {
		if slices.Contains([]string{host, short}, n) || in.Host == host {
			found = append(found, n)
		}
	}
	sort.Strings(found)
	switch len(found) {
	case 0:
		return "", eval.InHive(fmt.Errorf("no instance is named %q or has host = %q: name this machine's instance with --instance", short, host))
	case 1:
		return found[0], nil
	}
	return "", eval.InHive(fmt.Errorf("instances %s all match this machine (%s): choose one with --instance", strings.Join(found, ", "), host))
}

// LocalHive is h reduced to instance name, reached on this machine as
// user: no store, no jump host, nobody else.
func LocalHive(h *eval.Hive, name, user string) *eval.Hive {
	in := *h.Inventory.Instances[name]
	in.Store, in.Jump, in.User = "", "", user
	inv := *h.Inventory
	inv.Instances = map[string]*eval.Instance{name: &in}
	return &eval.Hive{Src: h.Src, Inventory: &inv, Evaluator: h.Evaluator}
}

// ApplyLocal carries out a prepared plan of LocalHive on this machine.
func ApplyLocal(ctx context.Context, prep *plan.Prepared, opts Options) (*Report, error) {
	opts.local = true
	prep.Plan.Local()
	return execute(ctx, prep, Local{}, localCopier{}, opts)
}
