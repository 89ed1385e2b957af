package eval

import (
	"fmt"
	"path"
	"strings"
)

// Select resolves target patterns to instance names. A pattern is a glob on
// instance names, or @glob on tags. Instances named explicitly (a pattern
// without glob characters) come first, in the order given; the rest follow
// in pattern order, sorted by name within a pattern. Duplicates collapse to
// their first position. No patterns selects every instance. A pattern that
// matches nothing is an error: a typo must not silently shrink a deploy.
func (inv *Inventory) Select(patterns []string) ([]string, error) {
	names := inv.InstanceNames()
	if len(patterns) == 0 {
		return names, nil
	}
	seen := map[string]bool{}
	var out []string
	add := func(n string) {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	for _, p := range patterns {
		if err := validPattern(p); err != nil {
			return nil, err
		}
	}
	var unmatched []string
	// Explicit names first, so `deploy portico '*'` touches portico first.
	for _, p := range patterns {
		if isExplicit(p) {
			if _, ok := inv.Instances[p]; !ok {
				unmatched = append(unmatched, p)
				continue
			}
			add(p)
		}
	}
	for _, p := range patterns {
		if isExplicit(p) {
			continue
		}
		matched := false
		for _, n := range names {
			ok, _ := inv.matches(p, n)
			if ok {
				matched = true
				add(n)
			}
		}
		if !matched {
			unmatched = append(unmatched, p)
		}
	}
	if len(unmatched) > 0 {
		return nil, hiveError{fmt.Errorf("target %s matches no instance (patterns are globs on names, or @glob on tags)%s", quoteList(unmatched), inv.suggestTargets(unmatched))}
	}
	return out, nil
}

func isExplicit(p string) bool {
	return !strings.HasPrefix(p, "@") && !strings.ContainsAny(p, "*?[\\")
}

func validPattern(p string) error {
	glob := strings.TrimPrefix(p, "@")
	if glob == "" {
		return hiveError{fmt.Errorf("target %q: empty pattern", p)}
	}
	if _, err := globMatch(glob, ""); err != nil {
		return hiveError{fmt.Errorf("target %q: %w", p, err)}
	}
	return nil
}

func (inv *Inventory) matches(p, name string) (bool, error) {
	if tag, ok := strings.CutPrefix(p, "@"); ok {
		for _, t := range inv.Instances[name].Tags {
			if m, err := globMatch(tag, t); err != nil || m {
				return m, err
			}
		}
		return false, nil
	}
	return globMatch(p, name)
}

// globMatch is path.Match with '/' an ordinary character: instance names
// are not paths, and `*` that stopped at a '/' would silently leave
// instances such as "rack-1/web-1" out of a deploy of '*'.
func globMatch(pattern, name string) (bool, error) {
	const sep = "\x00" // cannot occur in a name or a pattern given on a command line
	return path.Match(strings.ReplaceAll(pattern, "/", sep), strings.ReplaceAll(name, "/", sep))
}

func quoteList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = fmt.Sprintf("%q", x)
	}
	return strings.Join(q, ", ")
}
