package eval

import (
	"fmt"
	"sort"
	"strings"

	"github.com/nix-hive/nix-hive/internal/spelling"
)

// suggestTargets is a " (did you mean ...?)" hint for targets that matched
// nothing: the closest instance name or @tag to each, if one is close.
func (inv *Inventory) suggestTargets(unmatched []string) string {
	var names, tags []string
	seenTag := map[string]bool{}
	for n, in := range inv.Instances {
		names = append(names, n)
		for _, t := range in.Tags {
			if !seenTag[t] {
				seenTag[t] = true
				tags = append(tags, t)
			}
		}
	}
	sort.Strings(names)
	sort.Strings(tags)
	var hints []string
	for _, p := range unmatched {
		if tag, ok := strings.CutPrefix(p, "@"); ok {
			if c := spelling.Closest(tag, tags); c != "" {
				hints = append(hints, fmt.Sprintf("%q", "@"+c))
			}
		} else if c := spelling.Closest(p, names); c != "" {
			hints = append(hints, fmt.Sprintf("%q", c))
		}
	}
	if len(hints) == 0 {
		return ""
	}
	return "; did you mean " + strings.Join(hints, ", ") + "?"
}

// NoSuchInstance is the error for an instance name the hive does not have,
// with the closest name it does have (an ErrHive).
func (inv *Inventory) NoSuchInstance(name string) error {
	hint := ""
	if h := inv.suggestTargets([]string{name}); h != "" {
		hint = " (" + strings.TrimPrefix(h, "; ") + ")"
	}
	return hiveError{fmt.Errorf("no instance %q in the hive%s", name, hint)}
}
