package cli_test

import (
	"os"
	"strings"
	"testing"
)

// writeFile writes path or fails the test.
func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// editFile replaces the first old in path with new; a missing old fails
// the test rather than leaving the file as it was.
func editFile(t *testing.T, path, old, new string) {
	t.Helper()
	replaceIn(t, path, old, new, 1)
}

// editFileAll replaces every old in path with new.
func editFileAll(t *testing.T, path, old, new string) {
	t.Helper()
	replaceIn(t, path, old, new, -1)
}

func replaceIn(t *testing.T, path, old, new string, n int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("%s has no %q", path, old)
	}
	writeFile(t, path, strings.Replace(string(b), old, new, n))
}
