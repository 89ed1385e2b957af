package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// TreeConfig makes a tree of stores as large fleets have them: this
// machine (the deploy host) reaches a region store, the region reaches
// rack stores, and each rack reaches its consumers; nothing is reachable
// past the next level except through the one before it. Hosts are called
// RegionName, "rack-K" and "node-K-I" (K from 1 to Racks, I from 1 to
// PerRack); a host's Jump names the level above it, so a hive built from
// HiveNix reaches node-2-7 through region then rack-2. Which store each
// host substitutes from is the hive's choice (typically: its Jump).
type TreeConfig struct {
	Racks      int
	PerRack    int
	RegionName string // default "region"
}

// maxRacks is what the region's 198.18.N.0/24 holds: a /30 per rack after
// the uplink's.
const maxRacks = 63

// treeNames are the host names of a tree topology.
type treeNames struct {
	region string
	racks  []string
	nodes  [][]string // nodes[k] are rack k's consumers (0-based)
}

func (t *treeNames) all() []string {
	if t == nil {
		return nil
	}
	all := append([]string{t.region}, t.racks...)
	for _, ns := range t.nodes {
		all = append(all, ns...)
	}
	return all
}

func treeNamesOf(cfg Config) (*treeNames, error) {
	tc := cfg.Tree
	if tc == nil {
		return nil, nil
	}
	if cfg.Internal > 0 || len(cfg.InternalNames) > 0 {
		return nil, errors.New("lab config: a tree and internal hosts are two topologies; choose one")
	}
	if tc.Racks < 1 || tc.Racks > maxRacks || tc.PerRack < 0 {
		return nil, fmt.Errorf("lab config: tree of %d racks of %d: want 1 to %d racks and PerRack >= 0", tc.Racks, tc.PerRack, maxRacks)
	}
	t := &treeNames{region: tc.RegionName}
	if t.region == "" {
		t.region = "region"
	}
	for k := 1; k <= tc.Racks; k++ {
		t.racks = append(t.racks, fmt.Sprintf("rack-%d", k))
		var nodes []string
		for i := 1; i <= tc.PerRack; i++ {
			nodes = append(nodes, fmt.Sprintf("node-%d-%d", k, i))
		}
		t.nodes = append(t.nodes, nodes)
	}
	return t, nil
}

// treeNet is the network of a tree: the region's namespace, joined to this
// machine by a veth pair, and one namespace per rack, joined to the
// region's by another. The region's namespace uses 198.18.N.0/30 for the
// uplink (as internalNet does) and 198.18.N.4K/30 for rack K; a rack's
// namespace routes everything else to the region, so racks reach the
// region's address (to substitute from it) but not this machine.
type treeNet struct {
	up    *internalNet // the region's namespace and uplink
	racks []rackNet
}

type rackNet struct {
	name       string   // ip netns name
	vethRegion string   // the pair's end in the region's namespace
	vethRack   string   // its end in the rack's namespace
	regionAddr string   // address of vethRegion
	rackAddr   string   // address of vethRack: the rack host's address
	loopback   []string // consumers' addresses, on the rack namespace's lo
}

func newTreeNet(b *addrBlock, racks int) *treeNet {
	t := &treeNet{up: newInternalNet(b)}
	for k := 1; k <= racks; k++ {
		t.racks = append(t.racks, rackNet{
			name:       fmt.Sprintf("nhlab-%d-%d", b.n, k),
			vethRegion: fmt.Sprintf("nhl%dk%dr", b.n, k),
			vethRack:   fmt.Sprintf("nhl%dk%dn", b.n, k),
			regionAddr: fmt.Sprintf("198.18.%d.%d", b.n, 4*k+1),
			rackAddr:   fmt.Sprintf("198.18.%d.%d", b.n, 4*k+2),
		})
	}
	return t
}

func (r *rackNet) path() string { return "/run/netns/" + r.name }

// create makes the namespaces and links; rack K's consumers' addresses
// are in t.racks[K-1].loopback. Leftovers of a lab that died with this
// block are removed first, as internalNet.create does.
func (t *treeNet) create(ctx context.Context) error {
	t.remove(ctx)
	var addrs []string
	for _, r := range t.racks {
		addrs = append(addrs, r.regionAddr, r.rackAddr)
	}
	if err := checkUnroutable(ctx, "", addrs); err != nil {
		return err
	}
	if err := t.up.create(ctx, nil); err != nil {
		return err
	}
	unlock, err := lockWait(ctx, filepath.Join(lockDir, "netns.lock"))
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range t.racks {
		errs = append(errs, runIP(ctx, "", "netns", "add", r.name))
	}
	unlock()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	var root, region []string
	for _, r := range t.racks {
		root = append(root, fmt.Sprintf("link add %s netns %s type veth peer name %s netns %s", r.vethRegion, t.up.name, r.vethRack, r.name))
		region = append(region,
			fmt.Sprintf("addr add %s/30 dev %s", r.regionAddr, r.vethRegion),
			fmt.Sprintf("link set %s up", r.vethRegion))
	}
	if err := runIPBatch(ctx, "", root); err != nil {
		return err
	}
	if err := runIPBatch(ctx, t.up.name, region); err != nil {
		return err
	}
	for _, r := range t.racks {
		inside := []string{
			"link set lo up",
			fmt.Sprintf("addr add %s/30 dev %s", r.rackAddr, r.vethRack),
			fmt.Sprintf("link set %s up", r.vethRack),
			fmt.Sprintf("route add default via %s", r.regionAddr),
		}
		for _, a := range r.loopback {
			inside = append(inside, fmt.Sprintf("addr add %s/32 dev lo", a))
		}
		if err := runIPBatch(ctx, r.name, inside); err != nil {
			return err
		}
	}
	return nil
}

// remove deletes the rack namespaces (their veths go with them: no host
// process is left to keep them alive) and the region's network; also
// those of an earlier lab with more racks.
func (t *treeNet) remove(ctx context.Context) error {
	var errs []error
	left, _ := filepath.Glob(fmt.Sprintf("/run/netns/%s-*", t.up.name))
	for _, p := range left {
		if _, err := os.Stat(p); err == nil {
			errs = append(errs, runIP(ctx, "", "netns", "del", filepath.Base(p)))
		}
	}
	errs = append(errs, t.up.remove(ctx))
	return errors.Join(errs...)
}

// addTreeHosts adds the region, the racks and their consumers to l.Hosts
// and records each rack's consumer addresses for treeNet.create.
func (l *Lab) addTreeHosts(t *treeNames) {
	add := func(name, addr, jump, netns string) {
		l.Hosts = append(l.Hosts, newHost(l, name, addr, jump, netns, addr))
	}
	add(t.region, l.tree.up.nsAddr, "", l.tree.up.path())
	for k, r := range t.racks {
		add(r, l.tree.racks[k].rackAddr, t.region, l.tree.racks[k].path())
	}
	for k, nodes := range t.nodes {
		rn := &l.tree.racks[k]
		for _, n := range nodes {
			addr := l.block.hostAddr(len(l.Hosts))
			rn.loopback = append(rn.loopback, addr)
			add(n, addr, t.racks[k], rn.path())
		}
	}
}
