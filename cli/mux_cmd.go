package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/fanout"
	"github.com/nix-hive/nix-hive/internal/cmdline"
	"github.com/nix-hive/nix-hive/mux"
	"github.com/nix-hive/nix-hive/state"
	"github.com/nix-hive/nix-hive/transport"
)

// MuxCmd is `nix-hive mux`.
type MuxCmd struct {
	Start MuxStartCmd `cmd:"" help:"Start the hive's connection holder and connect it to the targets."`
	Stop  MuxStopCmd  `cmd:"" help:"Stop the hive's connection holders; their connections close."`
	Check MuxCheckCmd `cmd:"" help:"List the hive's connection holders and what each holds."`
	Serve MuxServeCmd `cmd:"" hidden:"" help:"Be the connection holder (what start runs in the background)."`
	SSH   MuxSSHCmd   `cmd:"" name:"ssh" hidden:"" help:"Be the ssh that nix copy runs: its command runs over a deploy's own connection (mux.Relay)."`
}

func (c *MuxCmd) Help() string {
	return `A connection holder is a background process, like OpenSSH's ControlPersist
master, that keeps an SSH connection to every instance of the hive (and
each one's sftp session) open between commands. While it runs, status,
deploy, run, ssh and scp go through it instead of connecting: they cost
each host a session but no new login, status reads each host's state
files over the held sftp session, and a deploy leaves a host that already
runs its system alone without taking its deploy lock. --no-mux connects
directly anyway.

Without a holder, the first command that connects starts one, as
OpenSSH's ControlMaster auto with ControlPersist does: --mux-persist
(default 10m, or NIX_HIVE_MUX_PERSIST) is how long it stays unused, and
0 starts none. mux start starts one and connects it to every target now,
so that the first command is fast too.

The holder belongs to the hive (its directory) and serves its endpoints
as they were when it started: once an instance, address, login, key or
jump host changes, the next command retires it (it ends when the
commands still using it do) and goes on with a new one. mux check lists
the hive's holders, mux stop stops them all (--all: every holder of this
user). A holder ends after --idle without a command using it, with mux
stop, or when killed, and then removes its socket, record and log. Its socket lies in a directory
only this user can enter ($XDG_RUNTIME_DIR/nix-hive, else
/tmp/nix-hive-UID), and it serves only this user's processes. It logs in
to the hosts with the ssh agent's keys and unencrypted identity files: it
has no terminal to ask for a passphrase, so a host that refuses those
keys is logged in to by the command, which can ask.`
}

// MuxStartCmd is `nix-hive mux start`.
type MuxStartCmd struct {
	Fleet
	Idle     time.Duration `default:"10m" help:"End after this long without a command using the holder (0: never)."`
	Parallel int           `default:"32" help:"Hosts connected at once."`
	Targets  []string      `arg:"" optional:"" help:"Instance name globs, or @tag globs, to connect now (default: all); others are connected when first used."`
}

func (c *MuxStartCmd) Run(ctx context.Context, g *Globals, h *eval.Hive, st *state.File) error {
	switch {
	case c.Idle < 0:
		return cmdline.UsageError{Err: fmt.Errorf("--idle %s: want 0 (never) or more", c.Idle)}
	case c.NoMux:
		return cmdline.UsageError{Err: errors.New("--no-mux: mux start starts the holder")}
	}
	targets, err := h.Inventory.Select(c.Targets)
	if err != nil {
		return err
	}
	pool, held, err := c.holderPool(g, h, st)
	if err != nil {
		return err
	}
	defer pool.Close()
	failed := connectAll(ctx, pool, targets, c.Parallel)
	info, err := held.Info()
	if err != nil {
		return err
	}
	for _, f := range failed {
		fmt.Fprintf(g.stderr, "nix-hive: mux: %s\n", f)
	}
	fmt.Fprintf(g.stdout, "mux: pid %d holds %d connections (%d of %d targets connected), idle timeout %s\n",
		info.Pid, info.Connected, len(targets)-len(failed), len(targets), info.Idle)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(failed) > 0 {
		return fmt.Errorf("mux: %d of %d targets could not be connected (the holder runs, and tries them again when used)", len(failed), len(targets))
	}
	return nil
}

// holderPool is a pool through the hive's holder, started if none
// answers; held is the way to it.
func (c *MuxStartCmd) holderPool(g *Globals, h *eval.Hive, st *state.File) (pool *transport.Pool, held *mux.Client, err error) {
	cfg := c.transportConfig(h, st)
	sock, _, err := ensureHolder(cfg, c.Idle)
	if err != nil {
		return nil, nil, err
	}
	held, err = mux.Dial(sock, cfg.ConnectTimeout)
	if err != nil {
		return nil, nil, fmt.Errorf("mux: started, but it does not answer at %s: %w", sock, err)
	}
	cfg.Holder = held
	if pool, err = newPool(g, h, cfg); err != nil {
		held.Close()
		return nil, nil, err
	}
	return pool, held, nil
}

// connectAll has the holder connect to every target and open its sftp
// session, parallel at once; it returns the failures, sorted.
func connectAll(ctx context.Context, pool *transport.Pool, targets []string, parallel int) []string {
	var mu sync.Mutex
	var failed []string
	fanout.Each(ctx, len(targets), parallel, func(ctx context.Context, i int) {
		if _, err := pool.Client(ctx, targets[i]); err != nil {
			mu.Lock()
			failed = append(failed, fmt.Sprintf("%s: %v", targets[i], err))
			mu.Unlock()
			return
		}
		// The sftp session status reads through; a host whose sshd has
		// none is asked with a shell instead, so no error here.
		if f, err := pool.Files(ctx, targets[i]); err == nil {
			f.Exists("/")
		}
	})
	slices.Sort(failed)
	return failed
}

// MuxStopCmd is `nix-hive mux stop`.
type MuxStopCmd struct {
	Fleet
	All bool `help:"Stop every holder of this user, whatever hive it belongs to."`
}

func (c *MuxStopCmd) Run(g *Globals, src eval.Source) error {
	if c.NoMux {
		return cmdline.UsageError{Err: errors.New("--no-mux: this command is about the holder")}
	}
	hive, whose := src.Dir, "this hive"
	if c.All {
		hive, whose = "", "this user"
	}
	holders, err := mux.Holders(hive)
	if err != nil {
		return err
	}
	if len(holders) == 0 {
		fmt.Fprintf(g.stderr, "mux: no holder runs for %s\n", whose)
		return nil
	}
	var errs []error
	for _, h := range holders {
		info, _ := h.Info()
		if err := h.Stop(); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(g.stdout, "mux: stopped pid %d (%s)%s\n", h.Pid, holderWhat(h, c.All), connectionsClosed(h, info))
	}
	return errors.Join(errs...)
}

// holderWhat says which holder h is, for mux stop and check.
func holderWhat(h mux.Record, withHive bool) string {
	what := "current"
	if h.Retired {
		what = "retired: an earlier version of the hive"
	}
	if withHive {
		what += ", hive " + h.Hive
	}
	return what
}

func connectionsClosed(h mux.Record, info mux.Info) string {
	if h.Retired {
		return ""
	}
	return fmt.Sprintf("; its %d connections are closed", info.Connected)
}

// MuxCheckCmd is `nix-hive mux check`.
type MuxCheckCmd struct {
	Fleet
}

// muxCheckRow is one holder as mux check --json prints it.
type muxCheckRow struct {
	mux.Record
	// Stale: it serves an earlier version of the hive; the next command
	// that connects replaces it.
	Stale bool      `json:"stale"`
	Info  *mux.Info `json:"info,omitempty"`
}

func (c *MuxCheckCmd) Run(g *Globals, h *eval.Hive, st *state.File) error {
	if c.NoMux {
		return cmdline.UsageError{Err: errors.New("--no-mux: this command is about the holder")}
	}
	holders, err := mux.Holders(h.Src.Dir)
	if err != nil {
		return err
	}
	cfg := c.transportConfig(h, st)
	rows := make([]muxCheckRow, len(holders))
	for i, hd := range holders {
		rows[i] = muxCheckRow{Record: hd, Stale: hd.Retired || hd.Stale(cfg)}
		if info, err := hd.Info(); err == nil {
			rows[i].Info = &info
		}
	}
	if g.JSON {
		if err := json.NewEncoder(g.stdout).Encode(rows); err != nil {
			return err
		}
	}
	if len(rows) == 0 {
		return errors.New("mux: no holder runs for this hive")
	}
	if g.JSON {
		return nil
	}
	for _, r := range rows {
		fmt.Fprintf(g.stdout, "mux: pid %d (%s), up %s", r.Pid, holderWhat(r.Record, false), time.Since(r.Started).Round(time.Second))
		switch {
		case r.Info != nil:
			fmt.Fprintf(g.stdout, ", idle timeout %s: holds %d connections (%d made since it started), %d sessions opened",
				r.Info.Idle, r.Info.Connected, r.Info.Handshakes, r.Info.Sessions)
		case r.Retired:
			fmt.Fprint(g.stdout, ": ends once the commands using it do")
		}
		if r.Stale && !r.Retired {
			fmt.Fprint(g.stdout, "; the hive changed since it started: the next command replaces it")
		}
		fmt.Fprintf(g.stdout, "; socket %s, log %s\n", r.Socket, r.Log)
	}
	return nil
}

// MuxServeCmd is `nix-hive mux serve`: the holder itself (mux.Run),
// reading its endpoints from stdin, as mux.Ensure starts it
// (holderCommand). It prints "ready" once it listens.
type MuxServeCmd struct {
	Socket string        `required:"" help:"Socket to listen on."`
	Log    string        `help:"The holder's log (its stderr), removed when it ends."`
	Idle   time.Duration `default:"10m" help:"End after this long without a client (0: never)."`
}

func (c *MuxServeCmd) Run(g *Globals) error {
	return mux.Run(g.stdin, g.stdout, g.stderr, c.Socket, c.Log, c.Idle)
}

// MuxSSHCmd is `nix-hive mux ssh`: what a deploy's nix copy runs as ssh
// (mux.SSHScript), so that a push rides the deploy's connection to the
// host instead of logging in again.
type MuxSSHCmd struct {
	Socket string   `required:"" help:"The deploy's relay socket."`
	Args   []string `arg:"" optional:"" passthrough:"" help:"ssh's arguments, as Nix gives them."`
}

func (c *MuxSSHCmd) Run(ctx context.Context, g *Globals) error {
	// kong keeps the "--" that ends nix-hive's own flags (SSHScript
	// writes one); what follows is ssh's command line, "--" and all.
	args := c.Args
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if code := mux.SSH(ctx, c.Socket, args, g.stdin, g.stdout, g.stderr); code != 0 {
		return cmdline.ExitError{Code: code}
	}
	return nil
}
