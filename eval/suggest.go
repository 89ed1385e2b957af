package eval

import (
	"fmt"
	"sort"
	"strings"
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
			if c := closest(tag, tags); c != "" {
				hints = append(hints, fmt.Sprintf("%q", "@"+c))
			}
		} else if c := closest(p, names); c != "" {
			hints = append(hints, fmt.Sprintf("%q", c))
		}
	}
	if len(hints) == 0 {
		return ""
	}
	return "; did you mean " + strings.Join(hints, ", ") + "?"
}

// closest is the candidate nearest to word by edit distance, if it is near
// enough to be a typo (at most a third of the word's length, at least 1
// edit), else ""; one or two letters are too short to guess from.
// Ties go to the first candidate.
func closest(word string, candidates []string) string {
	if len(word) < 3 {
		return "" // too short to guess from
	}
	best, bestD := "", max(1, len(word)/3)+1
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(word), strings.ToLower(c)); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes
// (names are ASCII in practice).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
