package plan

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/nix-hive/nix-hive/endpoint"
	"github.com/nix-hive/nix-hive/eval"
)

// specialise sets each target's specialisation (override, when set, for
// every target; else the instance's own) and what it activates: the
// toplevel its system's specialisation/NAME leads to, read in this
// machine's store, which holds every closure it pushes. A system without
// that specialisation stops the plan before any host is touched.
func (p *Plan) specialise(inv *eval.Inventory, override string) error {
	if override != "" {
		if err := endpoint.CheckSpecialisation(override); err != nil {
			return fmt.Errorf("--specialisation %q %w", override, err)
		}
	}
	for _, t := range p.Targets {
		h := p.Hosts[t]
		name := inv.Instances[t].Specialisation
		if override != "" {
			name = override
		}
		if name == "" {
			continue
		}
		if on := p.BuiltOn[h.OutPath]; on != "" {
			return eval.InHive(fmt.Errorf("instance %q: specialisation %q: its system was built on %s and stays there, while nix-hive reads a system's specialisations in this machine's store: build it here to deploy a specialisation", t, name, on))
		}
		active, err := SpecialisationOf(h.OutPath, name)
		if err != nil {
			// What the hive or the command line asked for is not there.
			return eval.InHive(fmt.Errorf("instance %q: %w", t, err))
		}
		h.Specialisation, h.Active = name, active
	}
	return nil
}

// Runs is what /run/current-system is once h is activated: its system,
// or its specialisation's toplevel.
func (h *Host) Runs() string {
	if h.Active != "" {
		return h.Active
	}
	return h.OutPath
}

// SpecialisationOf is the toplevel of system's specialisation name, as
// this machine's store has it.
func SpecialisationOf(system, name string) (string, error) {
	link := filepath.Join(system, "specialisation", name)
	active, err := filepath.EvalSymlinks(link)
	if err != nil {
		return "", fmt.Errorf("system %s has no specialisation %q here (%w): its specialisation.%s must be set in the system's configuration", system, name, err, name)
	}
	if !strings.HasPrefix(active, "/nix/store/") || strings.Count(active, "/") != 3 {
		return "", fmt.Errorf("specialisation %q of %s leads to %s, not to a system in the Nix store", name, system, active)
	}
	return active, nil
}
