package host

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/nix-hive/nix-hive/shell"
	"github.com/nix-hive/nix-hive/transport"
)

// Privilege is how commands become root on hosts whose login is not
// root: the privilege command (--sudo) and, when sudo wants one, the
// login's password.
//
// The password goes to sudo on its standard input (sudo -S), never on a
// command line, in the environment or in a file: each command that needs
// it starts with a line of the password and a line with a marker random
// to this run, then the command's own input. sudo reads the first line
// one byte at a time and leaves the rest; a small shell running as root
// then drops everything up to the marker, so the command sees its own
// input whether sudo asked (the password consumed) or not (credentials
// cached, or a NOPASSWD rule: the line is dropped unread).
type Privilege struct {
	// Command is the privilege command; "" runs commands as the login.
	Command string
	// Ask prompts for the password, once: nil when there is no terminal
	// to ask on.
	Ask func() ([]byte, error)
	// Upfront gives every non-root host the password from the start
	// (--ask-sudo-password), instead of when its sudo turns out to need
	// one.
	Upfront bool
	// Warn tells the user of a host that works, but not as it should
	// (nil: nobody).
	Warn func(msg string)

	once     sync.Once
	password []byte
	askErr   error
	marker   string
	mu       sync.Mutex
	hosts    map[string]bool   // hosts given the password
	checked  map[string]bool   // hosts where sudo took it
	refused  error             // a host's sudo refused it: no other host is tried
	agents   map[string]string // hosts' nix-hive-agent of this version: its path
	probed   map[string]string // hosts asked for one: what they answered
	// installed are the hosts whose root login has this nix-hive's agent
	// at RootAgentPath (Lock gets it there).
	installed map[string]bool
	// sessions are the hosts' held deploy locks whose sessions run the
	// agent's operations.
	sessions map[string]*DeployLock
}

// NewPrivilege is the privilege command cmd with password handling.
func NewPrivilege(cmd string, ask func() ([]byte, error), upfront bool) *Privilege {
	b := make([]byte, 16)
	rand.Read(b)
	return &Privilege{Command: cmd, Ask: ask, Upfront: upfront, marker: "nix-hive-sudo-" + hex.EncodeToString(b),
		hosts: map[string]bool{}, checked: map[string]bool{}, agents: map[string]string{}, probed: map[string]string{}, installed: map[string]bool{}}
}

// isSudo says whether the privilege command is sudo, which alone is
// given passwords (how to feed doas or run0 one differs).
func (p *Privilege) isSudo() bool {
	f := strings.Fields(p.Command)
	return len(f) > 0 && (f[0] == "sudo" || strings.HasSuffix(f[0], "/sudo"))
}

// forHost is how host's commands become root: the privilege command as
// given, or, once the host is given the password, sudo reading it from
// standard input; through the host's agent when it has this nix-hive's.
// A root login's are the agent in its store, once Lock found it.
func (p *Privilege) forHost(host string) escalation {
	if p == nil {
		return escalation{}
	}
	p.mu.Lock()
	agent := p.agents[host]
	var esc escalation
	if p.installed[host] {
		esc.installed = RootAgentPath()
	}
	p.mu.Unlock()
	if p.Command == "" {
		return esc
	}
	password := p.usesPassword(host)
	switch {
	case agent != "" && password:
		esc.prefix, esc.agent = p.withPassword()+shell.Quote(agent)+" --skip-to "+p.marker, true
	case agent != "":
		esc.prefix, esc.agent = p.Command+" "+shell.Quote(agent), true
	case password:
		skip := `while IFS= read -r l; do [ "$l" = "$0" ] && break; done; exec "$@"`
		// The marker is $0 of the skipping shell: constant to it, and
		// not a secret.
		esc.prefix = p.withPassword() + "sh -c " + shell.Quote(skip) + " " + p.marker
	default:
		esc.prefix = p.Command
	}
	return esc
}

// rootAgentFound records that host's root login has this nix-hive's
// agent installed at RootAgentPath.
func (p *Privilege) rootAgentFound(host string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.installed[host] = true
}

// HasRootAgent says whether host's root login was found with this
// nix-hive's agent (by a lock in this run).
func (p *Privilege) HasRootAgent(host string) bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.installed[host]
}

func (p *Privilege) warn(msg string) {
	if p != nil && p.Warn != nil {
		p.Warn(msg)
	}
}

// ProbeAgent asks host, as its login, for a nix-hive-agent, once: one of
// this nix-hive's version is used from then on.
func (p *Privilege) ProbeAgent(ctx context.Context, remote Remote, host string) error {
	if p == nil || p.Command == "" {
		return nil
	}
	p.mu.Lock()
	_, done := p.probed[host]
	p.mu.Unlock()
	if done {
		return nil
	}
	var out, stderr lockedBuffer
	code, err := remote.Run(ctx, host, asLogin(agentProbe), nil, &out, &stderr)
	if err != nil {
		return fmt.Errorf("look for nix-hive-agent: %w", err)
	}
	answer := strings.TrimSpace(out.String())
	p.mu.Lock()
	defer p.mu.Unlock()
	p.probed[host] = answer
	if path, version, ok := strings.Cut(answer, " "); code == 0 && ok && version == AgentVersion() {
		p.agents[host] = path
	}
	return nil
}

// agentMismatch explains a host's agent of another version, if it has one.
func (p *Privilege) agentMismatch(host string) string {
	if p == nil {
		return ""
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	path, version, ok := strings.Cut(p.probed[host], " ")
	if !ok || version == AgentVersion() {
		return ""
	}
	return fmt.Sprintf("; its %s is version %q, this nix-hive's is %s (install this one: nix-hive agent, or lib/module.nix from this nix-hive)", path, version, AgentVersion())
}

// CopyProgram is the remote program nix copy runs on host, whose login
// is user, to write its store: nix-store through the privilege command
// (nix-store --serve --write needs root when no daemon accepts the import
// for the user); "" to run it as the login: for root, or when sudo there
// wants a password, which nix copy has no way to give, or when the host
// has the nix-hive agent, whose sudo rules allow nothing else (the host's
// nix-daemon, which NixOS runs, imports the signed closure then).
func (p *Privilege) CopyProgram(host, user string) string {
	esc := p.forHost(host)
	if !NeedsPrivilege(user) || esc.prefix == "" || esc.agent || p.usesPassword(host) {
		return ""
	}
	return esc.prefix + " nix-store"
}

func (p *Privilege) usesPassword(host string) bool {
	if p == nil || !p.isSudo() {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.Upfront || p.hosts[host]
}

// ErrSudoPassword is sudo on a host wanting a password nix-hive cannot
// give it.
var ErrSudoPassword = errors.New("sudo needs a password")

// errNotAllowed is sudo refusing the command nix-hive gave it.
var errNotAllowed = errors.New("sudo does not allow nix-hive's command")

// notAllowed reports whether stderr is sudo refusing the command itself.
func notAllowed(stderr string) bool { return strings.Contains(stderr, "is not allowed to execute") }

// needsPassword reports whether stderr is sudo saying it needs a
// password it could not read.
func needsPassword(stderr string) bool {
	return strings.Contains(stderr, "sudo: a password is required") ||
		strings.Contains(stderr, "sudo: a terminal is required") ||
		strings.Contains(stderr, "sudo: no tty present")
}

// givePassword makes host use the password from now on, asking for it
// if nobody has yet. It fails when there is no terminal to ask on.
func (p *Privilege) givePassword(host string) error {
	if p == nil || !p.isSudo() {
		return ErrSudoPassword
	}
	if err := p.ask(); err != nil {
		return err
	}
	p.mu.Lock()
	p.hosts[host] = true
	p.mu.Unlock()
	return nil
}

// ask prompts once; every later call has the first answer.
func (p *Privilege) ask() error {
	p.once.Do(func() {
		if p.Ask == nil {
			p.askErr = fmt.Errorf("%w and there is no terminal to ask it on: run nix-hive on a terminal with --ask-sudo-password, or give the login NOPASSWD sudo rules (README: least privilege)", ErrSudoPassword)
			return
		}
		p.password, p.askErr = p.Ask()
	})
	return p.askErr
}

// Prepare asks for the password now when it is wanted upfront, before
// any host is touched.
func (p *Privilege) Prepare() error {
	if p == nil || !p.Upfront {
		return nil
	}
	if !p.isSudo() {
		return fmt.Errorf("--ask-sudo-password: the privilege command %q is not sudo", p.Command)
	}
	return p.ask()
}

// check makes sure, once per host, that sudo there takes the password,
// before a command whose input follows it: a refused password would make
// sudo read that input as further attempts. The check gives sudo the
// password line alone, so a wrong one counts as one failed attempt (and
// stops every other host from trying it: account lockouts count).
func (p *Privilege) check(ctx context.Context, remote Remote, host string) error {
	p.mu.Lock()
	done, refused := p.checked[host], p.refused
	p.mu.Unlock()
	switch {
	case done:
		return nil
	case refused != nil:
		return refused
	}
	if err := p.ask(); err != nil {
		return err
	}
	in := bytes.NewReader(append(append([]byte(nil), p.password...), '\n'))
	var stderr lockedBuffer
	cmd := p.withPassword() + "sh -c 'exit 0'"
	p.mu.Lock()
	if agent := p.agents[host]; agent != "" {
		cmd = p.withPassword() + shell.Quote(agent) + " version"
	}
	p.mu.Unlock()
	code, err := remote.Run(ctx, host, cmd, in, io.Discard, &stderr)
	switch {
	case err != nil:
		return fmt.Errorf("sudo password check: %w", err)
	case code != 0 && notAllowed(stderr.String()):
		return fmt.Errorf("%w: %s%s", errNotAllowed, lastLines(stderr.String(), 1), p.agentMismatch(host))
	case code != 0:
		err = fmt.Errorf("sudo refused the password (exit %d: %s)", code, lastLines(stderr.String(), 1))
		p.mu.Lock()
		p.refused = fmt.Errorf("%w on another host: not tried here", err)
		p.mu.Unlock()
		return err
	}
	p.mu.Lock()
	p.checked[host] = true
	p.mu.Unlock()
	return nil
}

// base is the privilege command without a flag that forbids reading a
// password (-n): the command a password is given to.
func (p *Privilege) base() string {
	var out []string
	for _, f := range strings.Fields(p.Command) {
		if f != "-n" && f != "--non-interactive" {
			out = append(out, f)
		}
	}
	return strings.Join(out, " ")
}

// withPassword is the privilege command reading the password from stdin
// (-S), with no prompt of its own on the command's stderr (-p ”), up to
// the command it runs.
func (p *Privilege) withPassword() string { return p.base() + " -S -p '' -- " }

// stdin is the input of cmd: the password and marker first when cmd
// runs sudo with the password.
func (p *Privilege) stdin(cmd string, in io.Reader) io.Reader {
	if p == nil || p.password == nil || !strings.Contains(cmd, p.marker) {
		return in
	}
	head := bytes.NewReader(append(append(append([]byte(nil), p.password...), '\n'), p.marker+"\n"...))
	if in == nil {
		return head
	}
	return io.MultiReader(head, in)
}

// Hosts is h with every command that runs sudo with the password given
// it on standard input.
func (p *Privilege) Hosts(h Hosts) Hosts {
	if p == nil || !p.isSudo() {
		return h
	}
	return privilegedHosts{privilegedRemote: privilegedRemote{Remote: h, p: p}, hosts: h}
}

// Remote is Hosts for a Remote.
func (p *Privilege) Remote(r Remote) Remote {
	if p == nil || !p.isSudo() {
		return r
	}
	return privilegedRemote{Remote: r, p: p}
}

type privilegedRemote struct {
	Remote
	p *Privilege
}

func (h privilegedRemote) Run(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return h.Remote.Run(ctx, name, cmd, h.p.stdin(cmd, stdin), stdout, stderr)
}

func (h privilegedRemote) RunFresh(ctx context.Context, name, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return h.Remote.RunFresh(ctx, name, cmd, h.p.stdin(cmd, stdin), stdout, stderr)
}

// privilegedHosts adds the hosts' sftp to privilegedRemote.
type privilegedHosts struct {
	privilegedRemote
	hosts Hosts
}

func (h privilegedHosts) SFTP(ctx context.Context, name string) (*transport.SFTP, error) {
	return h.hosts.SFTP(ctx, name)
}
