package spelling

import "testing"

func TestClosest(t *testing.T) {
	tests := []struct {
		word       string
		candidates []string
		want       string
	}{
		{"sytems", []string{"defaults", "systems", "instances"}, "systems"},
		{"keyfile", []string{"keyFile", "publicKey"}, "keyFile"},
		{"portco", []string{"portico", "storage"}, "portico"},
		{"database", []string{"www"}, ""},
		{"b", []string{"a"}, ""}, // too short to guess from
		{"web", []string{"www", "web-1"}, ""},
		{"prot", []string{"port", "host"}, "port"}, // a swap is one edit
		{"hsot", []string{"port", "host"}, "host"},
	}
	for _, tt := range tests {
		if got := Closest(tt.word, tt.candidates); got != tt.want {
			t.Errorf("Closest(%q, %q) = %q; want %q", tt.word, tt.candidates, got, tt.want)
		}
	}
}

func TestDistance(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{{"", "", 0}, {"abc", "", 3}, {"kitten", "sitting", 3}, {"flaw", "lawn", 2},
		{"prot", "port", 1}, {"ab", "ba", 1}, {"ca", "abc", 3}} {
		if got := Distance(tt.a, tt.b); got != tt.want {
			t.Errorf("Distance(%q, %q) = %d; want %d", tt.a, tt.b, got, tt.want)
		}
	}
}
