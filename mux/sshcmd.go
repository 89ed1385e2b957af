package mux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/nix-hive/nix-hive/shell"
)

// sshCommand is what an ssh command line asks for, as SSH reads it.
type sshCommand struct {
	dest    string
	command string
	// localCommand is the LocalCommand ssh runs here once connected,
	// when PermitLocalCommand allows it: Nix 2.24 waits for its
	// "started" before it speaks.
	localCommand string
	// control is -O's operation: "check" from Nix 2.24 asking whether a
	// master runs; a relay has none.
	control string
}

// sshArgFlags are OpenSSH's options that take an argument (ssh(1)).
const sshArgFlags = "BbcDEeFIiJLlmOopQRSWw"

// sshRefused are options that would make ssh do more than run one
// command: forwardings, a master, backgrounding.
const sshRefused = "DLRWJMNfw"

// parseSSH reads ssh's command line the way OpenSSH does (options also
// after the destination, until "--" or the command), keeping what a
// relay needs. The relay holds the connection with the hive's settings,
// so the ones that shape a connection (-F, -i, -p, -l, -o User...) are
// accepted and not used.
func parseSSH(args []string) (sshCommand, error) {
	var c sshCommand
	permit := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			if c.dest == "" && i+1 < len(args) {
				c.dest, i = args[i+1], i+1
			}
			c.command = strings.Join(args[i+1:], " ")
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			if c.dest == "" {
				c.dest = a
				continue
			}
			c.command = strings.Join(args[i:], " ")
			break
		}
		for j := 1; j < len(a); j++ {
			f := a[j]
			if strings.IndexByte(sshRefused, f) >= 0 {
				return c, fmt.Errorf("option -%c is not supported: the relay runs one command", f)
			}
			if strings.IndexByte(sshArgFlags, f) < 0 {
				continue
			}
			v := a[j+1:]
			if v == "" {
				if i+1 >= len(args) {
					return c, fmt.Errorf("option -%c needs an argument", f)
				}
				i++
				v = args[i]
			}
			switch f {
			case 'O':
				c.control = v
			case 'o':
				k, val, ok := strings.Cut(v, "=") // or "Key Value"
				if !ok {
					k, val, _ = strings.Cut(v, " ")
				}
				switch strings.ToLower(strings.TrimSpace(k)) {
				case "permitlocalcommand":
					permit = strings.EqualFold(strings.TrimSpace(val), "yes")
				case "localcommand":
					c.localCommand = strings.TrimSpace(val)
				}
			}
			break
		}
	}
	if !permit {
		c.localCommand = ""
	}
	if c.dest == "" {
		return c, errors.New("no destination")
	}
	if _, host, ok := strings.Cut(c.dest, "@"); ok {
		c.dest = host // the relay logs in as the hive says
	}
	if c.command == "" && c.control == "" {
		return c, errors.New("no command: the relay runs commands, not shells")
	}
	return c, nil
}

// SSH is an ssh stand-in that runs its command on an instance over the
// Relay at socket: what `nix copy` runs as ssh (SSHScript). It answers
// as OpenSSH does where Nix looks: the remote command's exit status,
// 255 and a message on stderr when it cannot run it, 255 for "-O check"
// (no master runs).
func SSH(ctx context.Context, socket string, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c, err := parseSSH(args)
	if err != nil {
		fmt.Fprintf(stderr, "ssh (nix-hive relay): %v\n", err)
		return 255
	}
	if c.control != "" {
		fmt.Fprintf(stderr, "ssh (nix-hive relay): no master for %s (-O %s)\n", c.dest, c.control)
		return 255
	}
	code, err := relaySession(ctx, socket, c, stdin, stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "ssh (nix-hive relay): %s: %v\n", c.dest, err)
		return 255
	}
	return code
}

func relaySession(ctx context.Context, socket string, c sshCommand, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	m, err := Dial(socket, 0)
	if err != nil {
		return 0, err
	}
	defer m.Close()
	m.via = "the deploy's connection"
	stop := context.AfterFunc(ctx, func() { m.Close() })
	defer stop()
	client, _, err := m.Dial(ctx, c.dest, false)
	if err != nil {
		return 0, err
	}
	s, err := client.NewSession()
	if err != nil {
		return 0, err
	}
	defer s.Close()
	s.Stdin, s.Stdout, s.Stderr = stdin, stdout, stderr
	if c.localCommand != "" {
		// OpenSSH runs it once connected, before the command's output.
		lc := exec.CommandContext(ctx, "/bin/sh", "-c", c.localCommand)
		lc.Stdout, lc.Stderr = stdout, stderr
		if err := lc.Run(); err != nil {
			fmt.Fprintf(stderr, "ssh (nix-hive relay): LocalCommand: %v\n", err)
		}
	}
	if err := s.Start(c.command); err != nil {
		return 0, err
	}
	err = s.Wait()
	var ee *ssh.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee) && ee.Signal() == "":
		return ee.ExitStatus(), nil
	case errors.As(err, &ee):
		return 255, fmt.Errorf("remote command killed by signal %s", ee.Signal())
	default:
		return 0, err
	}
}

// SSHScript is the ssh that a program this command runs finds first on
// its PATH, to reach the instances through relay: a script that runs
// exe, a link to this program named nix-hive, with the hidden `mux ssh`
// command.
func SSHScript(exe, socket string) string {
	return "#!/bin/sh\nexec " + shell.Quote(exe) + " mux ssh --socket " + shell.Quote(socket) + " -- \"$@\"\n"
}
