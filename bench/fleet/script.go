package main

import (
	"context"
	"fmt"
	"slices"

	"golang.org/x/sync/errgroup"

	"github.com/nix-hive/nix-hive/lab"
	"github.com/nix-hive/nix-hive/shell"
)

// measureScript runs the baseline: what a careful person would write by
// hand for this tree, with OpenSSH through the config nix-hive generates.
// The three systems go to the region once; then the region activates
// while every rack substitutes its system and the consumers' from the
// region and activates; then the consumers, b.parallel() at a time,
// substitute from their rack and activate. targets nil means every host.
func (b *bench) measureScript(ctx context.Context, r *row, logName string, targets []string) {
	b.around(ctx, r, func() error { return b.script(ctx, logName, targets) })
}

func (b *bench) script(ctx context.Context, logName string, targets []string) error {
	in := func(h *lab.Host) bool { return targets == nil || slices.Contains(targets, h.Name) }
	region, rack, web := b.out["region"], b.out["rack"], b.out["web"]
	logs := *b.logs
	logs.Env = append(logs.Env, "NIX_SSHOPTS=-F "+b.sshCfg)
	if _, err := logs.Run(ctx, logName, nil, "nix", "copy", "--to", "ssh://"+regionName, region, rack, web); err != nil {
		return fmt.Errorf("push to %s: %w", regionName, err)
	}
	ssh := func(ctx context.Context, host, cmd string) error {
		if _, err := b.logs.Run(ctx, logName, nil, "ssh", "-F", b.sshCfg, "--", host, cmd); err != nil {
			return fmt.Errorf("%s: %w", host, err)
		}
		return nil
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(b.parallel())
	regionAddr := b.lab.Host(regionName).Addr
	for _, h := range b.lab.Hosts {
		switch {
		case !in(h):
		case h.Name == regionName:
			g.Go(func() error { return ssh(gctx, h.Name, activate(region)) })
		case h.Jump == regionName:
			g.Go(func() error { return ssh(gctx, h.Name, realise("root@"+regionAddr, rack, web)+" && "+activate(rack)) })
		}
	}
	if err := g.Wait(); err != nil {
		return err
	}
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(b.parallel())
	for _, h := range b.lab.Hosts {
		if !in(h) || h.Name == regionName || h.Jump == regionName {
			continue
		}
		store := "root@" + b.lab.Host(h.Jump).Addr
		g.Go(func() error { return ssh(gctx, h.Name, realise(store, web)+" && "+activate(web)) })
	}
	return g.Wait()
}

// realise substitutes paths from the ssh store at userHost, signatures
// required, as nix-hive's consumers do.
func realise(userHost string, paths ...string) string {
	args := append([]string{"nix-store", "--realise"}, paths...)
	args = append(args, "--option", "substituters", "ssh://"+userHost, "--option", "require-sigs", "true")
	return shell.QuoteArgs(args) + " >/dev/null"
}

// activate switches a host to path, the same two steps nix-hive takes.
func activate(path string) string {
	return fmt.Sprintf("nix-env -p /nix/var/nix/profiles/system --set %s && %s switch",
		shell.Quote(path), shell.Quote(path+"/bin/switch-to-configuration"))
}
