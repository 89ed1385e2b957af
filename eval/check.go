package eval

import (
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"

	"github.com/nix-hive/nix-hive/endpoint"
)

// checkEndpoints applies package endpoint's rules to every instance: a
// hive is untrusted input (it may be generated from Terraform output), and
// its names, addresses, logins, tags, store URLs and ssh options reach
// OpenSSH %-tokens, config files and command lines. The problems are in
// lib/hive.nix's form ("instance "x": attribute host: ..."); one that many
// instances share (a bad value in defaults) is said once, naming a few.
func (inv *Inventory) checkEndpoints() []string {
	var order []string
	who := map[string][]string{}
	add := func(name, problem string) {
		if who[problem] == nil {
			order = append(order, problem)
		}
		who[problem] = append(who[problem], name)
	}
	for _, name := range inv.InstanceNames() {
		in := inv.Instances[name]
		nameErr := endpoint.CheckName(name)
		if nameErr != nil {
			add(name, "the name "+nameErr.Error())
		}
		// The host defaults to the name: said once, as the name.
		if err := endpoint.CheckHost(in.Host); err != nil && (nameErr == nil || in.Host != name) {
			add(name, fmt.Sprintf("attribute host: %q %v", in.Host, err))
		}
		for _, h := range in.Hosts[min(1, len(in.Hosts)):] {
			if err := endpoint.CheckHost(h); err != nil {
				add(name, fmt.Sprintf("attribute host: %q %v", h, err))
			}
		}
		if err := endpoint.CheckUser(in.User); err != nil {
			add(name, fmt.Sprintf("attribute user: %q %v", in.User, err))
		}
		// storeUser defaults to user: said once, as user.
		if err := endpoint.CheckUser(in.StoreUser); err != nil && in.StoreUser != in.User {
			add(name, fmt.Sprintf("attribute storeUser: %q %v", in.StoreUser, err))
		}
		for _, tag := range in.Tags {
			if err := endpoint.CheckTag(tag); err != nil {
				add(name, fmt.Sprintf("attribute tags: %q %v", tag, err))
			}
		}
		if in.Specialisation != "" {
			if err := endpoint.CheckSpecialisation(in.Specialisation); err != nil {
				add(name, fmt.Sprintf("attribute specialisation: %q %v", in.Specialisation, err))
			}
		}
		if in.StoreIsURL() {
			if err := CheckStoreURL(in.Store); err != nil {
				add(name, fmt.Sprintf("attribute store: %q %v", in.Store, err))
			}
		}
		for _, k := range slices.Sorted(maps.Keys(in.SSH)) {
			if err := endpoint.CheckOption(k, fmt.Sprint(in.SSH[k])); err != nil {
				add(name, "attribute ssh: "+err.Error())
			}
		}
	}
	out := make([]string, 0, len(order))
	for _, p := range order {
		out = append(out, instancesPhrase(who[p])+": "+p)
	}
	return append(out, inv.checkSystems()...)
}

// checkSystems applies the same rules to the systems' names, which name
// files, and to their profiles, whose names, users and commands reach
// the host's activation job.
func (inv *Inventory) checkSystems() []string {
	var out []string
	for _, s := range slices.Sorted(maps.Keys(inv.Systems)) {
		if err := endpoint.CheckSystem(s); err != nil {
			out = append(out, fmt.Sprintf("system %q: the name %v", s, err))
		}
		ps := inv.Systems[s].Profiles
		for _, n := range slices.Sorted(maps.Keys(ps)) {
			where := fmt.Sprintf("system %q: profile %q: ", s, n)
			if err := endpoint.CheckProfile(n); err != nil {
				out = append(out, where+"the name "+err.Error())
			}
			if err := endpoint.CheckUser(ps[n].User); err != nil {
				out = append(out, fmt.Sprintf("%sattribute user: %q %v", where, ps[n].User, err))
			}
			if err := endpoint.CheckActivate(ps[n].Activate); err != nil {
				out = append(out, fmt.Sprintf("%sattribute activate: %q %v", where, ps[n].Activate, err))
			}
		}
	}
	return out
}

// instancesPhrase names the instances a problem concerns: all of them up
// to three, else three and how many more.
func instancesPhrase(names []string) string {
	q := make([]string, 0, 3)
	for _, n := range names[:min(3, len(names))] {
		q = append(q, fmt.Sprintf("%q", n))
	}
	switch {
	case len(names) == 1:
		return "instance " + q[0]
	case len(names) <= 3:
		return "instances " + strings.Join(q, ", ")
	}
	return fmt.Sprintf("instances %s and %d more", strings.Join(q, ", "), len(names)-3)
}

// CheckStoreURL checks the address of an ssh store URL: nix copy hands
// it to ssh on this machine, where "-oProxyCommand=..." would be an
// option, and consumers to theirs.
func CheckStoreURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("is not a URL: %w", err)
	}
	if u.Scheme != "ssh" && u.Scheme != "ssh-ng" {
		return nil
	}
	if err := endpoint.CheckHost(u.Hostname()); err != nil {
		return fmt.Errorf("has a host that %w", err)
	}
	if u.User != nil {
		if err := endpoint.CheckUser(u.User.Username()); err != nil {
			return fmt.Errorf("has a login that %w", err)
		}
	}
	return nil
}
