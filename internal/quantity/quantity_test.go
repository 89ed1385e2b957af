package quantity

import "testing"

func TestBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB",
		5 << 20: "5.0 MiB", 3 << 30: "3.0 GiB", 2 << 40: "2.0 TiB", 2048 << 40: "2048.0 TiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestCount(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want string
	}{{0, "0 hosts"}, {1, "1 host"}, {2, "2 hosts"}, {1005, "1005 hosts"}} {
		if got := Count(tc.n, "host"); got != tc.want {
			t.Errorf("Count(%d, host) = %q, want %q", tc.n, got, tc.want)
		}
	}
}
