package hivelib

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
)

//go:embed hive.nix eval.nix import.nix
var files embed.FS

// Install writes the library into a content-addressed directory under base
// (once per version of the library) and returns that directory.
func Install(base string) (string, error) {
	h := sha256.New()
	names := []string{"hive.nix", "eval.nix", "import.nix"}
	contents := map[string][]byte{}
	for _, n := range names {
		b, err := files.ReadFile(n)
		if err != nil {
			return "", err
		}
		contents[n] = b
		h.Write([]byte(n))
		h.Write(b)
	}
	dir := filepath.Join(base, "lib-"+hex.EncodeToString(h.Sum(nil))[:16])
	if _, err := os.Stat(filepath.Join(dir, "eval.nix")); err == nil {
		return dir, nil
	}
	tmp, err := os.MkdirTemp(base, ".lib-")
	if err != nil {
		if err := os.MkdirAll(base, 0o755); err != nil {
			return "", fmt.Errorf("install hive library: %w", err)
		}
		if tmp, err = os.MkdirTemp(base, ".lib-"); err != nil {
			return "", fmt.Errorf("install hive library: %w", err)
		}
	}
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(tmp, n), contents[n], 0o644); err != nil {
			os.RemoveAll(tmp)
			return "", fmt.Errorf("install hive library: %w", err)
		}
	}
	// A concurrent run may have installed the same version first; either
	// copy is identical, so losing the race is fine.
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		if _, statErr := os.Stat(filepath.Join(dir, "eval.nix")); statErr != nil {
			return "", fmt.Errorf("install hive library: %w", err)
		}
	}
	return dir, nil
}

// Source returns the embedded hive.nix.
func Source() []byte {
	b, _ := files.ReadFile("hive.nix")
	return b
}
