package main

import (
	"fmt"
	"io/fs"
	"path"
	"strconv"

	"github.com/nix-hive/nix-hive/nixcmd"
)

// shape is what every instance's keys look like: how many, and which of
// them come from a command. Key i (1 to keys) is a command key when
// i*num/den (integer division) passes an integer: num/den of them, spread
// evenly (1/10: keys 10, 20, ...).
type shape struct {
	keys     int
	num, den int
}

// newShape is the shape of keys keys with a share of them (0 to 1, to a
// thousandth) from a command.
func newShape(keys int, share float64) (shape, error) {
	if keys < 1 || share < 0 || share > 1 {
		return shape{}, fmt.Errorf("need -keys >= 1 and 0 <= -command-share <= 1")
	}
	num, den := int(share*1000+0.5), 1000
	g := gcd(num, den)
	return shape{keys: keys, num: num / g, den: den / g}, nil
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func (s shape) command(i int) bool { return i*s.num/s.den != (i-1)*s.num/s.den }

// keySpec is one key of one instance as the hive declares it, and so as
// it must be found on the host.
type keySpec struct {
	Name    string
	Value   string
	Argv    []string // the command that prints Value, nil for a text key
	Dest    string
	User    string
	Group   string
	Mode    fs.FileMode
	Post    bool // upload = "post-activation"
	Readers bool // readable by someone besides root
}

// The key shapes besides their source, each every nth key (see hiveNix,
// which must say the same):
//   - every 5th (1, 6, 11, ...) is uploaded post-activation, as 20% of the
//     keys of wire's benchmark are;
//   - every 4th (4, 8, ...) is nobody:nogroup 0440, readable by them,
//     which opens the key directories to others' search (0751);
//   - every 6th (6, 12, ...) goes to /run/keys/svc, a directory of its
//     own (some of them readable by nobody: 12, 24, ...).
const (
	keysDir = "/run/keys"
	svcDir  = "/run/keys/svc"
)

// specs are the keys the hive gives host.
func (s shape) specs(host string) []keySpec {
	out := make([]keySpec, 0, s.keys)
	for i := 1; i <= s.keys; i++ {
		k := keySpec{
			Name:  "key-" + strconv.Itoa(i),
			Value: fmt.Sprintf("%s-key-%d-value", host, i),
			Dest:  path.Join(keysDir, "key-"+strconv.Itoa(i)),
			User:  "root", Group: "root", Mode: 0o400,
			Post: i%5 == 1,
		}
		if s.command(i) {
			k.Argv = []string{"printf", "%s", k.Value}
		}
		if i%4 == 0 {
			k.User, k.Group, k.Mode, k.Readers = "nobody", "nogroup", 0o440, true
		}
		if i%6 == 0 {
			k.Dest = path.Join(svcDir, k.Name)
		}
		out = append(out, k)
	}
	return out
}

// dirs are the key directories, parents first, with their modes: 0750,
// as nix-hive makes them, with o+x for one that leads to a key others
// may read.
func (s shape) dirs() map[string]fs.FileMode {
	out := map[string]fs.FileMode{}
	for _, k := range s.specs("x") {
		for d := path.Dir(k.Dest); d != path.Dir(keysDir); d = path.Dir(d) {
			m := out[d] | 0o750
			if k.Readers {
				m |= 0o001
			}
			out[d] = m
		}
	}
	return out
}

// count is how many of s's keys per instance match f.
func (s shape) count(f func(keySpec) bool) int {
	n := 0
	for _, k := range s.specs("x") {
		if f(k) {
			n++
		}
	}
	return n
}

// hiveNix is the benchmark's hive: every lab host an instance with the
// keys specs describes, made by a function so that the file stays small
// whatever the number of keys. The system is never built.
func hiveNix(s shape) string {
	return fmt.Sprintf(`# Written by bench/keys.
let
  lab = import ./lab.nix;
  keys = %d;
  num = %d;
  den = %d;
  mod = a: b: a - a / b * b;
  isCommand = i: i * num / den != (i - 1) * num / den;
  key = host: i:
    let
      name = "key-${toString i}";
      value = "${host}-key-${toString i}-value";
    in {
      inherit name;
      value = (if isCommand i then { command = [ "printf" "%%s" value ]; } else { text = value; })
        // (if mod i 5 == 1 then { upload = "post-activation"; } else { })
        // (if mod i 4 == 0 then { user = "nobody"; group = "nogroup"; mode = "0440"; } else { })
        // (if mod i 6 == 0 then { dest = %s + "/${name}"; } else { });
    };
in
{
  systems.idle.toplevel = import ../testsystems { name = "idle"; };
  instances = builtins.mapAttrs (name: conn: conn // {
    system = "idle";
    keys = builtins.listToAttrs (builtins.genList (i: key name (i + 1)) keys);
  }) lab;
}
`, s.keys, s.num, s.den, nixcmd.String(svcDir))
}
