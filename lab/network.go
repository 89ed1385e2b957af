package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// lockDir holds one lock file per 127.77.B.0/24 block; a lab holds its
// block's lock for its whole life, so labs started by parallel test binaries
// never share an address.
const lockDir = "/run/nix-hive-lab"

// perBlock is what fits in a /24 block: .1 is left alone, hosts take .2 to
// .254. A larger lab takes several blocks.
const perBlock = 253

// maxBlocks bounds the blocks one lab takes, leaving most of the 254 to
// parallel labs.
const maxBlocks = 16

// maxHosts is the most hosts one lab can have.
const maxHosts = perBlock * maxBlocks

// addrBlock is the set of 127.77.N.0/24 blocks (and, for the first, the
// 198.18.N.0/24 veth subnets) a lab owns while their lock files are locked.
type addrBlock struct {
	n     int   // the first block: names the lab's namespaces and veths
	ns    []int // all blocks, in the order hosts fill them
	locks []*os.File
}

// lockBlock takes enough blocks for hosts addresses; they need not be
// adjacent.
func lockBlock(hosts int) (*addrBlock, error) {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", lockDir, err)
	}
	want := max(1, (hosts+perBlock-1)/perBlock)
	b := &addrBlock{}
	for n := 1; n <= 254 && len(b.ns) < want; n++ {
		f, ok, err := tryLock(blockLock(n))
		if err != nil {
			b.release()
			return nil, err
		}
		if ok {
			b.ns = append(b.ns, n)
			b.locks = append(b.locks, f)
		}
	}
	if len(b.ns) < want {
		b.release()
		return nil, fmt.Errorf("%d hosts need %d free address blocks 127.77.*.0/24, but other labs use all but %d (locks in %s)", hosts, want, len(b.ns), lockDir)
	}
	b.n = b.ns[0]
	return b, nil
}

// blockLock is the lock file of block n.
func blockLock(n int) string { return filepath.Join(lockDir, fmt.Sprintf("127.77.%d.0.lock", n)) }

// HoldBlock waits until no lab owns the address block of addr, a lab
// address (127.77.B.N, or 198.18.B.N of a lab whose first block is B), and
// keeps every lab from taking the block until release is called. A test
// looks at a closed lab's addresses this way without a lab that a parallel
// test binary starts reusing them meanwhile.
func HoldBlock(ctx context.Context, addr string) (release func(), err error) {
	a, err := netip.ParseAddr(addr)
	if err != nil || !a.Is4() {
		return nil, fmt.Errorf("hold the block of %q: not an IPv4 address", addr)
	}
	b := a.As4()
	if !(b[0] == 127 && b[1] == 77 || b[0] == 198 && b[1] == 18) || b[2] < 1 || b[2] > 254 {
		return nil, fmt.Errorf("hold the block of %s: not a lab address (127.77.B.N or 198.18.B.N, B from 1 to 254)", addr)
	}
	return lockWait(ctx, blockLock(int(b[2])))
}

// tryLock takes an exclusive flock on path without waiting. ok is false when
// another open file holds it; the returned file keeps the lock until closed.
func tryLock(path string) (f *os.File, ok bool, err error) {
	f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, false, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, true, nil
}

// hostAddr is the loopback address of the i-th host (0-based) of the lab.
func (b *addrBlock) hostAddr(i int) string {
	return fmt.Sprintf("127.77.%d.%d", b.ns[i/perBlock], i%perBlock+2)
}

func (b *addrBlock) release() error {
	if b == nil {
		return nil
	}
	var errs []error
	for _, f := range b.locks {
		errs = append(errs, f.Close())
	}
	b.locks = nil
	return errors.Join(errs...)
}

// labRange holds every address the lab gives a veth: 198.18.B.0/24 for a
// lab whose first block is B. It lies in 198.18.0.0/15, which RFC 2544
// reserves for network tests, so it collides with no real network; but
// without fenceLabRange this machine would send a packet for it out
// through its default route, to whatever answers there.
const labRange = "198.18.0.0/16"

// fenceLabRange keeps every packet for labRange on this machine (netns
// "", or the named namespace): an unreachable route for the whole range
// fails a connection at once with "no route to host", unless a running
// lab's veth, a longer prefix, carries it. Every lab start installs the
// route and no lab removes it, since a closed lab's addresses must lead
// nowhere too. Namespaces the lab makes need none: none routes past the
// lab's own links. Nor does IPv6: the lab addresses nothing by it (its
// veths have only their link-local addresses, which stay on the link).
func fenceLabRange(ctx context.Context, netns string) error {
	addErr := runIP(ctx, netns, "route", "add", "unreachable", labRange)
	if addErr == nil {
		return nil
	}
	// Usually an earlier or a parallel lab added it already.
	out, err := ipOutput(ctx, netns, "-o", "route", "show", "exact", labRange)
	if err != nil {
		return fmt.Errorf("keep the lab's addresses %s on this machine: %w; and %w", labRange, addErr, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "unreachable" && f[1] == labRange {
			return nil
		}
	}
	return fmt.Errorf("keep the lab's addresses %s on this machine: %w, and the route there is %q: the lab needs that range unreachable from here, so remove the route or run the lab on another machine", labRange, addErr, bytes.TrimSpace(out))
}

// checkUnroutable fails unless this machine (netns "", or the named
// namespace) has no route to any of addrs. A lab checks its veth addresses
// this way before it makes the links, so that they lead nowhere once the
// links are gone: not through a route more specific than the fence's, or a
// routing rule, out of the machine.
func checkUnroutable(ctx context.Context, netns string, addrs []string) error {
	if len(addrs) == 0 {
		return nil
	}
	var lines []string
	for _, a := range addrs {
		lines = append(lines, "route get "+a)
	}
	args := []string{"-o", "-force", "-batch", "-"}
	if netns != "" {
		args = append([]string{"-n", netns}, args...)
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// ip fails when a lookup fails, and every one should.
	runErr := cmd.Run()
	if err := ctx.Err(); err != nil {
		return err
	}
	if stdout.Len() > 0 {
		var routes []string
		for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
			route, _, _ := strings.Cut(line, `\`) // -o puts the cache flags after a backslash
			routes = append(routes, strings.TrimSpace(route))
		}
		return fmt.Errorf("lab addresses would leave this machine, where the lab needs %s unreachable: ip route get says %s; remove the route that takes them (ip route, ip rule) or run the lab on another machine", labRange, strings.Join(routes, "; "))
	}
	if n := strings.Count(stderr.String(), "No route to host"); n != len(addrs) {
		return fmt.Errorf("check that lab addresses %s lead nowhere: ip route get: %v: %s", strings.Join(addrs, " "), runErr, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}

// internalNet is the network namespace of a jump topology: the internal hosts
// listen on its loopback, the jump host also on its end of a veth pair whose
// other end is in the root namespace, with addresses in labRange.
type internalNet struct {
	name     string // ip netns name
	vethRoot string
	vethNS   string
	rootAddr string // root namespace end of the veth
	nsAddr   string // namespace end of the veth: the jump host's address
}

func newInternalNet(b *addrBlock) *internalNet {
	return &internalNet{
		name:     fmt.Sprintf("nhlab-%d", b.n),
		vethRoot: fmt.Sprintf("nhlab%dr", b.n),
		vethNS:   fmt.Sprintf("nhlab%dn", b.n),
		rootAddr: fmt.Sprintf("198.18.%d.1", b.n),
		nsAddr:   fmt.Sprintf("198.18.%d.2", b.n),
	}
}

// path is the namespace file that nsenter and setns use.
func (n *internalNet) path() string { return "/run/netns/" + n.name }

// create makes the namespace and the veth pair and puts loopbackAddrs on the
// namespace's lo. Leftovers of a lab that died with this block (a killed test
// binary cannot delete its namespace) are removed first: holding the block's
// lock proves nobody else uses them.
func (n *internalNet) create(ctx context.Context, loopbackAddrs []string) error {
	n.remove(ctx)
	if err := checkUnroutable(ctx, "", []string{n.rootAddr, n.nsAddr}); err != nil {
		return err
	}
	// Concurrent first uses of `ip netns add` race on making /run/netns a
	// shared mount; serialise them between labs.
	unlock, err := lockWait(ctx, filepath.Join(lockDir, "netns.lock"))
	if err != nil {
		return err
	}
	err = runIP(ctx, "", "netns", "add", n.name)
	unlock()
	if err != nil {
		return err
	}
	root := []string{
		fmt.Sprintf("link add %s type veth peer name %s netns %s", n.vethRoot, n.vethNS, n.name),
		fmt.Sprintf("addr add %s/30 dev %s", n.rootAddr, n.vethRoot),
		fmt.Sprintf("link set %s up", n.vethRoot),
	}
	inside := []string{
		"link set lo up",
		fmt.Sprintf("addr add %s/30 dev %s", n.nsAddr, n.vethNS),
		fmt.Sprintf("link set %s up", n.vethNS),
	}
	for _, a := range loopbackAddrs {
		inside = append(inside, fmt.Sprintf("addr add %s/32 dev lo", a))
	}
	if err := runIPBatch(ctx, "", root); err != nil {
		return err
	}
	return runIPBatch(ctx, n.name, inside)
}

// remove deletes the veth pair and the namespace; what does not exist is not
// an error, so remove also cleans up after a failed create.
func (n *internalNet) remove(ctx context.Context) error {
	var errs []error
	// Deleting one end deletes the pair; do it explicitly because a mount
	// namespace copied elsewhere could keep the network namespace (and with
	// it the veth) alive after `ip netns del`.
	if _, err := os.Stat("/sys/class/net/" + n.vethRoot); err == nil {
		errs = append(errs, runIP(ctx, "", "link", "del", n.vethRoot))
	}
	if _, err := os.Stat(n.path()); err == nil {
		errs = append(errs, runIP(ctx, "", "netns", "del", n.name))
	}
	return errors.Join(errs...)
}

func runIP(ctx context.Context, netns string, args ...string) error {
	_, err := ipOutput(ctx, netns, args...)
	return err
}

// ipOutput runs ip and returns its stdout; an error carries its stderr.
func ipOutput(ctx context.Context, netns string, args ...string) ([]byte, error) {
	if netns != "" {
		args = append([]string{"-n", netns}, args...)
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(append(out, stderr.Bytes()...)))
	}
	return out, nil
}

func runIPBatch(ctx context.Context, netns string, lines []string) error {
	args := []string{"-batch", "-"}
	if netns != "" {
		args = append([]string{"-n", netns}, args...)
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s <<%q: %w: %s", strings.Join(args, " "), lines, err, bytes.TrimSpace(out))
	}
	return nil
}

// lockWait takes an exclusive flock on path, polling so that ctx is honoured.
func lockWait(ctx context.Context, path string) (unlock func(), err error) {
	for {
		f, ok, err := tryLock(path)
		if err != nil {
			return nil, err
		}
		if ok {
			return func() { f.Close() }, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for lock %s: %w", path, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
