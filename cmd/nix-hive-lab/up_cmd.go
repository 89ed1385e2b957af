package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/nix-hive/nix-hive/lab"
)

type upCmd struct {
	Hosts         int               `short:"n" default:"3" help:"Plain hosts, reachable from this machine."`
	Names         []string          `help:"Names of the plain hosts (replaces -n; default host-1..host-N)." placeholder:"NAME"`
	Internal      int               `help:"Hosts reachable only through a jump host (adds the jump host)."`
	InternalNames []string          `help:"Names of the internal hosts (replaces --internal; default int-1..int-N)." placeholder:"NAME"`
	JumpName      string            `default:"portico" help:"Name of the jump host."`
	Racks         int               `help:"A tree of stores: a region host reachable from this machine, this many rack hosts reachable only through it, and --per-rack consumers behind each rack (rack-K, node-K-I)."`
	PerRack       int               `help:"Consumers behind each rack of --racks." placeholder:"N"`
	RegionName    string            `default:"region" help:"Name of the tree's region host."`
	Dir           string            `required:"" type:"path" placeholder:"DIR" help:"Directory for the hosts, lab.json, lab.nix and lab.pid."`
	Nix           string            `type:"path" placeholder:"BINDIR" help:"Bin directory of the Nix the hosts run (default: the nix on PATH)."`
	NixFor        map[string]string `placeholder:"HOST=BINDIR" help:"Another Nix for some hosts (a fleet mid-upgrade)."`
}

func (c *upCmd) Help() string {
	return `Writes DIR/lab.nix (the hosts as hive instances, for hive.nix) and then
DIR/lab.json (addresses, host keys, client key) once every host accepts SSH,
so a script can run 'nix-hive-lab up ... &' and wait for DIR/lab.json.
'ssh -F DIR/ssh_config host-1' logs in. Stop with Ctrl-C, SIGTERM or
'nix-hive-lab down --dir DIR'.`
}

func (c *upCmd) Run(ctx context.Context, out io.Writer) error {
	if err := lab.Check(); err != nil {
		return err
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return err
	}
	if inUse, err := lab.InUse(c.Dir); err != nil {
		return err
	} else if inUse {
		return fmt.Errorf("a lab already runs in %s; stop it with: nix-hive-lab down --dir %s", c.Dir, c.Dir)
	}
	// A lab.json left by a killed run would tell a waiting script the new
	// lab is up before it is.
	jsonFile, pidFile := filepath.Join(c.Dir, "lab.json"), filepath.Join(c.Dir, "lab.pid")
	if err := os.Remove(jsonFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	defer os.Remove(pidFile)

	cfg := lab.Config{Hosts: c.Hosts, Names: c.Names, Internal: c.Internal, InternalNames: c.InternalNames, JumpName: c.JumpName, Dir: c.Dir, Nix: c.Nix, NixFor: c.NixFor}
	if len(c.Names) > 0 {
		cfg.Hosts = 0
	}
	if c.Racks > 0 {
		cfg.Tree = &lab.TreeConfig{Racks: c.Racks, PerRack: c.PerRack, RegionName: c.RegionName}
	} else if c.PerRack > 0 {
		return errors.New("--per-rack needs --racks")
	}
	if len(c.InternalNames) > 0 {
		cfg.Internal = len(c.InternalNames)
	}
	l, err := lab.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer l.Close()
	// lab.json goes before the hosts do, so nobody reads it for a dying lab.
	defer os.Remove(jsonFile)
	if err := l.WriteInfo(c.Dir); err != nil {
		return err
	}
	fmt.Fprintf(out, "lab up: %d hosts, described in %s and %s\n", len(l.Hosts), jsonFile, filepath.Join(c.Dir, "lab.nix"))
	for _, h := range l.Hosts {
		via := ""
		if h.Jump != "" {
			via = " via " + h.Jump
		}
		fmt.Fprintf(out, "  %-12s %s%s\n", h.Name, h.Addr, via)
	}
	fmt.Fprintf(out, "log in: ssh -F %s %s\nstop: Ctrl-C, or nix-hive-lab down --dir %s\n", l.SSHConfigFile, l.Hosts[0].Name, c.Dir)
	<-ctx.Done()
	fmt.Fprintln(out, "stopping lab")
	os.Remove(jsonFile)
	return l.Close()
}
