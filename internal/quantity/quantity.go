// Package quantity writes counts and sizes the way every nix-hive message
// does ("1 host", "3 hosts", "1.5 MiB"), so that a summary, a plan and a
// progress line never disagree on how a number reads. It knows English
// plurals only as far as nix-hive's nouns need (an added "s").
package quantity

import "fmt"

// Count is n followed by noun, with an "s" unless n is 1.
func Count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// Bytes is n in B, KiB, MiB, GiB or TiB with one decimal.
func Bytes(n uint64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	unit := ""
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		v /= 1024
		unit = u
		if v < 1024 {
			break
		}
	}
	return fmt.Sprintf("%.1f %s", v, unit)
}
