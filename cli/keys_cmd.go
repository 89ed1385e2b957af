package cli

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/nix-hive/nix-hive/deploy"
	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/keys"
	"github.com/nix-hive/nix-hive/shell"
	"github.com/nix-hive/nix-hive/transport"
)

// KeysCmd is `nix-hive keys`.
type KeysCmd struct {
	List   KeysListCmd   `cmd:"" help:"Show which keys go where: source, destination, owner, mode (never values)."`
	Upload KeysUploadCmd `cmd:"" help:"Upload the targets' keys without deploying."`
}

// KeysListCmd is `nix-hive keys list`.
type KeysListCmd struct {
	Targets []string `arg:"" optional:"" help:"Instance name globs, or @tag globs (default: all)."`
}

// keyRow is one key of one instance, as listed.
type keyRow struct {
	Instance string `json:"instance"`
	*eval.Key
}

func (c *KeysListCmd) Run(g *Globals, h *eval.Hive) error {
	targets, err := h.Inventory.Select(c.Targets)
	if err != nil {
		return err
	}
	rows := []keyRow{}
	var table [][]string
	for _, t := range targets {
		in := h.Inventory.Instances[t]
		for _, name := range slices.Sorted(maps.Keys(in.Keys)) {
			k := in.Keys[name]
			rows = append(rows, keyRow{t, k})
			from := k.Source
			switch k.Source {
			case "file":
				from += " " + k.File
			case "command":
				from += " " + commandLine(k.Command)
			}
			table = append(table, []string{t, name, from, k.Dest, k.User + ":" + k.Group, k.Mode, k.Upload})
		}
	}
	return g.render(rows, "INSTANCE\tKEY\tSOURCE\tDEST\tOWNER\tMODE\tUPLOAD", table)
}

// KeysUploadCmd is `nix-hive keys upload`.
type KeysUploadCmd struct {
	Fleet
	// As run and status: a host costs a connection and an sftp session's
	// pipelined writes; key commands have bounds of their own.
	Parallel int      `default:"32" help:"Hosts worked on at once."`
	Targets  []string `arg:"" optional:"" help:"Instance name globs, or @tag globs (default: all)."`
	Escalation
	KeyLimits
}

// KeyLimits are the flags of the commands that upload keys.
type KeyLimits struct {
	KeyTimeout time.Duration `default:"1m" help:"How long a key's command may run (a key's own timeout attribute wins); one that runs longer is stopped, with what it started, and fails its hosts."`
}

func (c *KeysUploadCmd) Help() string {
	return `Uploads every key of the targets, as a deploy does but without building or
activating anything, under each host's deploy lock. A key whose value
cannot be had (a failing command, one that runs past --key-timeout, a
missing file) fails its host before anything is written there.`
}

func (c *KeysUploadCmd) Run(ctx context.Context, g *Globals, h *eval.Hive, pool *transport.Pool) error {
	targets, err := h.Inventory.Select(c.Targets)
	if err != nil {
		return err
	}
	conn, err := connection(g, &c.Fleet, &c.Escalation, c.Parallel)
	if err != nil {
		return err
	}
	up, err := keys.NewUploader(ctx, h, conn.Privilege.Hosts(pool), targets, conn.Privilege, c.KeyTimeout)
	if err != nil {
		return err
	}
	rows := deploy.UploadKeys(ctx, pool, h.Inventory, targets, up, conn)
	return fleetOutcome(ctx, g, "keys upload", rows, "INSTANCE\tKEYS\tRESULT", func(r deploy.KeysRow) ([]string, string) {
		return []string{r.Instance, fmt.Sprint(len(r.Keys))}, r.Error
	})
}

// commandLine shows a key's command as it was given: a shell string as
// itself, an argv list quoted.
func commandLine(argv []string) string {
	if len(argv) == 3 && argv[0] == "/bin/sh" && argv[1] == "-c" {
		return argv[2]
	}
	return shell.QuoteArgs(argv)
}
