package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nix-hive/nix-hive/lab"
)

type downCmd struct {
	Dir     string        `required:"" type:"path" placeholder:"DIR" help:"The directory given to 'up'."`
	Timeout time.Duration `default:"1m" help:"How long to wait for the lab to stop."`
}

func (c *downCmd) Run(ctx context.Context, out io.Writer) error {
	inUse, err := lab.InUse(c.Dir)
	if err != nil {
		return err
	}
	if !inUse {
		fmt.Fprintf(out, "no lab runs in %s\n", c.Dir)
		return nil
	}
	pidFile := filepath.Join(c.Dir, "lab.pid")
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return fmt.Errorf("a lab runs in %s, but not one started by nix-hive-lab up: %w", c.Dir, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return fmt.Errorf("%s: not a process id: %q", pidFile, data)
	}
	// up tears down on SIGTERM and releases the directory's lock last.
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop lab in %s (pid %d): %w", c.Dir, pid, err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	for {
		inUse, err := lab.InUse(c.Dir)
		if err != nil {
			return err
		}
		if !inUse {
			fmt.Fprintf(out, "lab in %s stopped\n", c.Dir)
			return nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("lab in %s (pid %d) still running after %v", c.Dir, pid, c.Timeout)
			}
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
