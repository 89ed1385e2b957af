package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/nix-hive/nix-hive/nixcmd"
)

// Config says which hosts a lab has.
type Config struct {
	Hosts int      // plain hosts reachable from the root namespace
	Names []string // optional names for the plain hosts (default "host-1".."host-N")
	// Internal > 0 makes a jump topology: one jump host plus this many
	// internal hosts, reachable only through it.
	Internal      int
	JumpName      string   // default "portico"
	InternalNames []string // default "int-1".."int-N"
	// Tree makes a tree of stores (region, racks, consumers) beside the
	// plain hosts; it excludes Internal.
	Tree *TreeConfig
	Dir  string // working directory; default: a new temp dir removed at Close
	// NoSFTP names hosts whose sshd offers no sftp subsystem, like a NixOS
	// host with services.openssh.allowSFTP = false.
	NoSFTP []string
	// NoGzip names hosts where gzip cannot be found (a file that is no
	// program hides it in their mount namespace), like a host trimmed to
	// the bare minimum: nix-hive must work there too.
	NoGzip []string
	// Nix is the bin directory of the Nix every host runs (its sessions
	// find it first on PATH, with NIX_CONF_DIR=/etc/nix); default: the
	// directory of the nix this process finds on PATH. NixFor overrides it
	// per host, for fleets mid-upgrade.
	Nix    string
	NixFor map[string]string
	// BootLoader gives hosts an emulated boot loader (SystemdBoot or
	// GRUB; see bootloader.go), by name.
	BootLoader map[string]string
}

// Lab is a set of running hosts and the files to reach them.
type Lab struct {
	Dir string
	// ClientKey is the client private key (ed25519, no passphrase) every
	// host authorizes for root; ClientKey+".pub" exists.
	ClientKey string
	// Hosts in a stable order: the jump host first if any, then the plain
	// hosts, then the internal ones; or, with a tree, the plain hosts, the
	// region, the racks and then each rack's consumers in rack order.
	Hosts []*Host
	// KnownHostsFile holds KnownHosts(); SSHConfigFile is an OpenSSH client
	// config naming every host (`ssh -F SSHConfigFile host-1`).
	KnownHostsFile string
	SSHConfigFile  string
	// Netns is the `ip netns` name of the internal network, "" without
	// internal hosts. The jump host and the internal hosts live in it. In a
	// tree it is the region's namespace (each rack has its own).
	Netns string
	// Uplink is the root-namespace end of the veth pair that leads to the
	// internal network: everything this machine sends to the jump host (and
	// through it) crosses it, so shaping it models a slow uplink.
	Uplink string

	removeDir  bool
	noSFTP     []string
	noGzip     []string
	nixFor     map[string]string // host name -> Nix bin directory
	bootLoader map[string]string // host name -> emulated boot loader
	dirLock    *os.File
	block      *addrBlock
	internal   *internalNet
	tree       *treeNet

	mu        sync.Mutex // guards the hosts' HostKey and the files derived from them
	closeOnce sync.Once
	closeErr  error
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// dirRE keeps lab paths free of what sshd_config and ssh_config would need
// quoted or would expand (%, spaces, quotes).
var dirRE = regexp.MustCompile(`^[A-Za-z0-9/._+-]+$`)

// Start creates the lab's files and starts all hosts in parallel. When it
// returns without error every host accepts SSH connections. On error nothing
// is left running.
func Start(ctx context.Context, cfg Config) (*Lab, error) {
	plain, internal, jump, err := hostNames(cfg)
	if err != nil {
		return nil, err
	}
	tree, err := treeNamesOf(cfg)
	if err != nil {
		return nil, err
	}
	l := &Lab{noSFTP: cfg.NoSFTP, noGzip: cfg.NoGzip}
	nixFor, err := nixDirs(cfg, append(append(append(append([]string(nil), plain...), internal...), jump), tree.all()...))
	if err != nil {
		return nil, err
	}
	l.nixFor = nixFor
	for n, loader := range cfg.BootLoader {
		if !validBootLoader(loader) {
			return nil, fmt.Errorf("lab config: boot loader of %q: %q is neither %q nor %q", n, loader, SystemdBoot, GRUB)
		}
		if _, ok := nixFor[n]; !ok {
			return nil, fmt.Errorf("lab config: boot loader of %q: no such host", n)
		}
	}
	l.bootLoader = cfg.BootLoader
	if err := l.start(ctx, cfg.Dir, plain, internal, jump, tree); err != nil {
		return nil, errors.Join(err, l.Close())
	}
	return l, nil
}

// nixDirs gives each host the bin directory of its Nix, checked to hold
// nix and to need no quoting in sshd_config.
func nixDirs(cfg Config, hosts []string) (map[string]string, error) {
	def := cfg.Nix
	if def == "" {
		p, err := exec.LookPath("nix")
		if err != nil {
			return nil, fmt.Errorf("lab config: no nix on PATH for the hosts to run (install nix-bin, or set the Nix bin directory): %w", err)
		}
		if p, err = filepath.Abs(p); err != nil {
			return nil, err
		}
		def = filepath.Dir(p)
	}
	for n := range cfg.NixFor {
		if !slices.Contains(hosts, n) {
			return nil, fmt.Errorf("lab config: Nix for host %q: no such host", n)
		}
	}
	dirs := map[string]string{}
	for _, n := range hosts {
		if n == "" {
			continue
		}
		d := def
		if o := cfg.NixFor[n]; o != "" {
			d = o
		}
		if !filepath.IsAbs(d) || !dirRE.MatchString(d) {
			return nil, fmt.Errorf("lab config: Nix bin directory %q of host %s: want an absolute path of letters, digits and /._+-", d, n)
		}
		if fi, err := os.Stat(filepath.Join(d, "nix")); err != nil || fi.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("lab config: Nix bin directory %s of host %s holds no nix executable", d, n)
		}
		dirs[n] = d
	}
	return dirs, nil
}

// hostNames applies the defaults of cfg and checks the names.
func hostNames(cfg Config) (plain, internal []string, jump string, err error) {
	names := func(n int, given []string, prefix, what string) ([]string, error) {
		if n == 0 {
			n = len(given)
		}
		if len(given) == 0 {
			for i := 1; i <= n; i++ {
				given = append(given, fmt.Sprintf("%s-%d", prefix, i))
			}
		}
		if len(given) != n {
			return nil, fmt.Errorf("lab config: %d %s but %d names for them", n, what, len(given))
		}
		return given, nil
	}
	if plain, err = names(cfg.Hosts, cfg.Names, "host", "hosts"); err != nil {
		return nil, nil, "", err
	}
	if internal, err = names(cfg.Internal, cfg.InternalNames, "int", "internal hosts"); err != nil {
		return nil, nil, "", err
	}
	tree, err := treeNamesOf(cfg)
	if err != nil {
		return nil, nil, "", err
	}
	all := append(append([]string(nil), plain...), tree.all()...)
	if len(internal) > 0 {
		jump = cfg.JumpName
		if jump == "" {
			jump = "portico"
		}
		all = append(all, jump)
		all = append(all, internal...)
	}
	if len(all) == 0 {
		return nil, nil, "", errors.New("lab config: no hosts (set Hosts, Internal or Tree)")
	}
	if len(all) > maxHosts {
		return nil, nil, "", fmt.Errorf("lab config: %d hosts, at most %d fit in a lab's %d address blocks", len(all), maxHosts, maxBlocks)
	}
	seen := map[string]bool{}
	for _, n := range all {
		if !nameRE.MatchString(n) {
			return nil, nil, "", fmt.Errorf("lab config: host name %q: use letters, digits, '.', '_' and '-'", n)
		}
		if seen[n] {
			return nil, nil, "", fmt.Errorf("lab config: host name %q used twice", n)
		}
		seen[n] = true
	}
	return plain, internal, jump, nil
}

func (l *Lab) start(ctx context.Context, dir string, plain, internal []string, jump string, tree *treeNames) error {
	if err := fenceLabRange(ctx, ""); err != nil {
		return err
	}
	if err := l.useDir(dir); err != nil {
		return err
	}
	n := len(plain) + len(internal) + len(tree.all())
	if jump != "" {
		n++
	}
	var err error
	if l.block, err = lockBlock(n); err != nil {
		return err
	}
	if len(internal) > 0 {
		l.internal = newInternalNet(l.block)
		l.Netns = l.internal.name
		l.Uplink = l.internal.vethRoot
	}
	if tree != nil {
		l.tree = newTreeNet(l.block, len(tree.racks))
		l.Netns = l.tree.up.name
		l.Uplink = l.tree.up.vethRoot
	}
	internalAddrs := l.addHosts(plain, internal, jump)
	if tree != nil {
		l.addTreeHosts(tree)
	}
	if err := l.writeFiles(); err != nil {
		return err
	}
	if l.internal != nil {
		if err := l.internal.create(ctx, internalAddrs); err != nil {
			return err
		}
	}
	if l.tree != nil {
		if err := l.tree.create(ctx); err != nil {
			return err
		}
	}
	sg, sctx := errgroup.WithContext(ctx)
	for _, h := range l.Hosts {
		sg.Go(func() error { return h.Start(sctx) })
	}
	return sg.Wait()
}

// addHosts gives every host its address and directory: the jump host
// first, then the plain hosts, then the internal ones. It returns the
// addresses that live in the internal network.
func (l *Lab) addHosts(plain, internal []string, jump string) []string {
	add := func(name, jumpName string) *Host {
		addr := l.block.hostAddr(len(l.Hosts))
		netns := ""
		if jumpName != "" {
			netns = l.internal.path()
		}
		h := newHost(l, name, addr, jumpName, netns, addr)
		l.Hosts = append(l.Hosts, h)
		return h
	}
	var internalAddrs []string
	if jump != "" {
		// The jump host's block address is its loopback address in the
		// internal network; this machine dials it at the namespace's.
		inside := l.block.hostAddr(len(l.Hosts))
		j := newHost(l, jump, l.internal.nsAddr, "", l.internal.path(), l.internal.nsAddr, inside)
		j.InternalAddr = inside
		l.Hosts = append(l.Hosts, j)
		internalAddrs = append(internalAddrs, inside)
	}
	for _, n := range plain {
		add(n, "")
	}
	for _, n := range internal {
		internalAddrs = append(internalAddrs, add(n, jump).Addr)
	}
	return internalAddrs
}

// writeFiles writes the client key, authorized_keys, every host's
// directory and configuration, known_hosts and the ssh config.
func (l *Lab) writeFiles() error {
	l.ClientKey = filepath.Join(l.Dir, "client", "id_ed25519")
	pub, err := writeKeyPair(l.ClientKey, "nix-hive-lab")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(l.authorizedKeysFile(), []byte(pub+"\n"), 0o644); err != nil {
		return err
	}
	var g errgroup.Group
	for _, h := range l.Hosts {
		g.Go(h.prepare)
	}
	if err := g.Wait(); err != nil {
		return err
	}
	l.KnownHostsFile = filepath.Join(l.Dir, "known_hosts")
	l.SSHConfigFile = filepath.Join(l.Dir, "ssh_config")
	l.mu.Lock()
	err = l.writeKnownHostsLocked()
	l.mu.Unlock()
	if err != nil {
		return err
	}
	return writeFileAtomic(l.SSHConfigFile, []byte(l.sshConfig()), 0o644)
}

// useDir sets up the lab directory: a new temporary one, or dir (created if
// missing) locked against a second lab and emptied of an earlier lab's hosts.
func (l *Lab) useDir(dir string) error {
	if dir == "" {
		d, err := os.MkdirTemp("", "nix-hive-lab-")
		if err != nil {
			return fmt.Errorf("lab dir: %w", err)
		}
		// sshd reads authorized_keys as the logging-in user: non-root
		// logins need to traverse the lab directory. The client's private
		// key stays in its own 0700 directory.
		if err := os.Chmod(d, 0o755); err != nil {
			return fmt.Errorf("lab dir: %w", err)
		}
		dir, l.removeDir = d, true
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("lab dir: %w", err)
	}
	// The resolved path is what the hosts see; /var/run is /run, say.
	abs, err := filepath.Abs(dir)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return fmt.Errorf("lab dir %s: %w", dir, err)
	}
	l.Dir = abs
	if !dirRE.MatchString(l.Dir) {
		return fmt.Errorf("lab dir %q: use only letters, digits and '/._+-' (the path goes into sshd and ssh configs)", l.Dir)
	}
	for _, o := range overlays {
		if l.Dir == o.inHost || strings.HasPrefix(l.Dir, o.inHost+"/") {
			return fmt.Errorf("lab dir %s: hosts cannot see it, since each host has its own %s; choose another", l.Dir, o.inHost)
		}
	}
	f, ok, err := tryLock(filepath.Join(l.Dir, dirLockName))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("lab dir %s is in use by a running lab", l.Dir)
	}
	l.dirLock = f
	// Hosts of an earlier lab in this directory are gone (the lock says so);
	// their stores must not leak into the new ones.
	if err := os.RemoveAll(filepath.Join(l.Dir, "hosts")); err != nil {
		return fmt.Errorf("lab dir %s: remove old hosts: %w", l.Dir, err)
	}
	return nil
}

// dirLockName is the file in a lab's directory that the lab keeps locked
// while it runs.
const dirLockName = ".lab.lock"

// InUse reports whether a running lab holds dir.
func InUse(dir string) (bool, error) {
	f, ok, err := tryLock(filepath.Join(dir, dirLockName))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if ok {
		f.Close()
	}
	return !ok, nil
}

func (l *Lab) authorizedKeysFile() string { return filepath.Join(l.Dir, "authorized_keys") }

// Host returns the host called name, nil if there is none.
func (l *Lab) Host(name string) *Host {
	for _, h := range l.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// KnownHosts returns known_hosts lines for all hosts, under every address
// each listens on.
func (l *Lab) KnownHosts() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.knownHostsLocked()
}

func (l *Lab) knownHostsLocked() string {
	var b strings.Builder
	for _, h := range l.Hosts {
		fmt.Fprintf(&b, "%s %s\n", strings.Join(h.listen, ","), h.HostKey)
	}
	return b.String()
}

// writeKnownHostsLocked writes the lab's known_hosts, which every host's
// /root/.ssh/known_hosts links to, so hosts can ssh to each other with
// strict host key checking. A link rather than a copy per host: copies
// are n lines written n times, 100 MB for 1,000 hosts.
func (l *Lab) writeKnownHostsLocked() error {
	if err := writeFileAtomic(l.KnownHostsFile, []byte(l.knownHostsLocked()), 0o644); err != nil {
		return err
	}
	for _, h := range l.Hosts {
		p := h.Path("/root/.ssh/known_hosts")
		if target, err := os.Readlink(p); err == nil && target == l.KnownHostsFile {
			continue
		}
		if err := os.Symlink(l.KnownHostsFile, p); err != nil {
			return fmt.Errorf("known_hosts of host %s: %w", h.Name, err)
		}
	}
	return nil
}

// HiveNix returns a Nix attrset of instances for a hive definition:
// connection attributes only (host, port, user, hostKey, jump, ssh); callers
// add system and the rest, e.g. with builtins.mapAttrs.
func (l *Lab) HiveNix() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	b.WriteString("{\n")
	for _, h := range l.Hosts {
		fmt.Fprintf(&b, "  %s = { host = %s; port = %d; user = \"root\"; hostKey = %s;",
			nixcmd.String(h.Name), nixcmd.String(h.Addr), h.Port, nixcmd.String(h.HostKey))
		if h.Jump != "" {
			fmt.Fprintf(&b, " jump = %s;", nixcmd.String(h.Jump))
		}
		fmt.Fprintf(&b, " ssh = { IdentityFile = %s; }; };\n", nixcmd.String(l.ClientKey))
	}
	b.WriteString("}\n")
	return b.String()
}

// sshConfig is an OpenSSH client config that reaches every host by name.
func (l *Lab) sshConfig() string {
	var b strings.Builder
	for _, h := range l.Hosts {
		fmt.Fprintf(&b, "Host %s\n  HostName %s\n", h.Name, h.Addr)
		if h.Jump != "" {
			fmt.Fprintf(&b, "  ProxyJump %s\n", h.Jump)
		}
	}
	fmt.Fprintf(&b, `Host *
  User root
  Port %d
  IdentityFile %s
  IdentitiesOnly yes
  UserKnownHostsFile %s
  StrictHostKeyChecking yes
  BatchMode yes
`, sshPort, l.ClientKey, l.KnownHostsFile)
	return b.String()
}

// Close stops every host, deletes the internal network and, when Start made
// the directory, removes it. It leaves the unreachable route that Start
// installs for the lab's veth addresses (198.18.0.0/16), so that a packet
// for a closed lab's address fails at once rather than leaving this
// machine. It is idempotent and returns the first call's result.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.close() })
	return l.closeErr
}

func (l *Lab) close() error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, h := range l.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.Stop(); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	// Rules a test system left on this machine's firewall (lab-service);
	// internal hosts' rules go with their network namespace. One listing
	// instead of an nft run per host, which took 15 s for 1,000 hosts.
	tables, listErr := exec.Command("nft", "list", "tables").Output()
	for _, h := range l.Hosts {
		if h.firewall.netns == "" && (listErr != nil || bytes.Contains(tables, []byte(" "+h.firewall.table+"\n"))) {
			h.firewall.open()
		}
	}
	if l.internal != nil {
		// Teardown must happen even when the caller's context is gone.
		errs = append(errs, l.internal.remove(context.Background()))
	}
	if l.tree != nil {
		errs = append(errs, l.tree.remove(context.Background()))
	}
	if l.removeDir && l.Dir != "" {
		if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove lab dir: %w", err))
		}
	}
	errs = append(errs, l.block.release())
	if l.dirLock != nil {
		errs = append(errs, l.dirLock.Close())
		l.dirLock = nil
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close lab %s: %w", l.Dir, err)
	}
	return nil
}
