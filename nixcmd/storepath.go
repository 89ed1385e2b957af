package nixcmd

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
)

// SourcePath is the store path `nix-store --add FILE` gives a regular,
// non-executable file named name holding contents: a content-addressed
// path, the same on every machine and in every Nix release, which a
// store accepts without a signature (its content is its name). Computed
// here so that nix-hive knows it without a store of its own.
func SourcePath(name string, contents []byte) string {
	nar := sha256.New()
	for _, s := range []string{"nix-archive-1", "(", "type", "regular", "contents"} {
		narString(nar, []byte(s))
	}
	narString(nar, contents)
	narString(nar, []byte(")"))
	fingerprint := "source:sha256:" + hex.EncodeToString(nar.Sum(nil)) + ":/nix/store:" + name
	sum := sha256.Sum256([]byte(fingerprint))
	// Nix folds the hash to 160 bits by XOR.
	var short [20]byte
	for i, b := range sum {
		short[i%20] ^= b
	}
	return "/nix/store/" + Nix32(short[:]) + "-" + name
}

// narString writes s as a NAR string: its length, then s padded to 8
// bytes.
func narString(w interface{ Write([]byte) (int, error) }, s []byte) {
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(s)))
	w.Write(n[:])
	w.Write(s)
	if pad := (8 - len(s)%8) % 8; pad > 0 {
		w.Write(make([]byte, pad))
	}
}

// Nix32 is Nix's base-32 encoding of a hash (its own alphabet, last byte
// first).
func Nix32(h []byte) string {
	const chars = "0123456789abcdfghijklmnpqrsvwxyz"
	n := (len(h)*8-1)/5 + 1
	out := make([]byte, 0, n)
	for k := n - 1; k >= 0; k-- {
		b := k * 5
		i, j := b/8, uint(b%8)
		c := h[i] >> j
		if i+1 < len(h) {
			c |= h[i+1] << (8 - j)
		}
		out = append(out, chars[c&0x1f])
	}
	return string(out)
}
