package spelling

import "strings"

// Closest is the candidate nearest to word by edit distance (ignoring
// case), if it is near enough to be a typo: at most a third of the word's
// length, at least one edit. Words of one or two letters are too short to
// guess from. "" when nothing is near; ties go to the first candidate.
func Closest(word string, candidates []string) string {
	if len(word) < 3 {
		return ""
	}
	best, bestD := "", max(1, len(word)/3)+1
	for _, c := range candidates {
		if d := Distance(strings.ToLower(word), strings.ToLower(c)); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// Distance is the edit distance between a and b in bytes (names are ASCII
// in practice), where swapping two neighbouring letters is one edit, as
// in "prot" for "port": the optimal string alignment distance.
func Distance(a, b string) int {
	pp := make([]int, len(b)+1) // row i-2
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
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], pp[j-2]+1)
			}
		}
		pp, prev, cur = prev, cur, pp
	}
	return prev[len(b)]
}
