package cli_test

import (
	"testing"

	"github.com/alecthomas/kong"

	"github.com/nix-hive/nix-hive/cli"
	"github.com/nix-hive/nix-hive/transport"
)

// TestFleetConnectTimeoutDefault: every command's --connect-timeout
// defaults to transport.DefaultConnectTimeout, the one place that decides
// it (a kong tag cannot name a Go constant).
func TestFleetConnectTimeoutDefault(t *testing.T) {
	parser, err := kong.New(&cli.CLI{}, kong.Name("nix-hive"))
	if err != nil {
		t.Fatal(err)
	}
	want := transport.DefaultConnectTimeout.String()
	seen := 0
	var walk func(n *kong.Node)
	walk = func(n *kong.Node) {
		for _, f := range n.Flags {
			if f.Name == "connect-timeout" {
				seen++
				if f.Default != want {
					t.Errorf("%s --connect-timeout defaults to %q; want %q (transport.DefaultConnectTimeout)", n.Path(), f.Default, want)
				}
			}
		}
		for _, c := range n.Children {
			walk(c)
		}
	}
	walk(parser.Model.Node)
	if seen == 0 {
		t.Fatal("no command has --connect-timeout")
	}
}
