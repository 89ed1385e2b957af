package hivelib_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/nixcmd"
)

// openHive evaluates the hive in dir the way nix-hive does (the embedded
// library, installed into a fresh cache).
func openHive(t *testing.T, dir string) (*eval.Hive, error) {
	t.Helper()
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	src, err := eval.Locate(dir)
	if err != nil {
		t.Fatal(err)
	}
	return eval.Open(context.Background(), src, &nixcmd.Runner{}, nil)
}

// The example's inventory holds one instance per element of its
// terraform.json output `hosts` and pulumi.json output `ciRunners`, with
// the names, addresses, systems, tags, host keys and jump hosts the
// elements give.
func TestImportExample(t *testing.T) {
	nixtest.Require(t)
	dir, _ := filepath.Abs("../examples/import")
	h, err := openHive(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	inv := h.Inventory

	var tf struct {
		Hosts struct {
			Sensitive bool
			Value     []struct {
				Name       string            `json:"name"`
				Role       string            `json:"role"`
				Region     string            `json:"region"`
				PublicIP   *string           `json:"public_ip"`
				PrivateIP  string            `json:"private_ip"`
				Bastion    *string           `json:"bastion"`
				HostKey    string            `json:"host_key"`
				InstanceID string            `json:"instance_id"`
				Tags       map[string]string `json:"tags"`
			}
		} `json:"hosts"`
	}
	readJSON(t, filepath.Join(dir, "terraform.json"), &tf)
	var pulumi struct {
		CIRunners map[string]struct {
			PublicIP string            `json:"publicIp"`
			HostKey  string            `json:"hostKey"`
			Zone     string            `json:"zone"`
			Labels   map[string]string `json:"labels"`
		} `json:"ciRunners"`
	}
	readJSON(t, filepath.Join(dir, "pulumi.json"), &pulumi)

	if n := len(tf.Hosts.Value); n != 200 {
		t.Fatalf("terraform.json holds %d hosts, want 200", n)
	}
	if got, want := len(inv.Instances), len(tf.Hosts.Value)+len(pulumi.CIRunners); got != want || want != 204 {
		t.Fatalf("%d instances, want %d", got, want)
	}

	// The bastion of each region, by its public address.
	bastions := map[string]string{}
	for _, e := range tf.Hosts.Value {
		if e.Role == "bastion" {
			bastions[*e.PublicIP] = e.Name
		}
	}
	if len(bastions) != 4 {
		t.Fatalf("%d bastions, want 4", len(bastions))
	}
	jumped := 0
	for _, e := range tf.Hosts.Value {
		i := inv.Instances[e.Name]
		if i == nil {
			t.Errorf("no instance %s", e.Name)
			continue
		}
		host, jump := "", ""
		if e.Bastion != nil {
			host, jump = e.PrivateIP, bastions[*e.Bastion]
			jumped++
		} else {
			host = *e.PublicIP
		}
		tags := []string{"env=" + e.Tags["env"], "role=" + e.Role, "team=" + e.Tags["team"]}
		got := []string{i.System, i.Host, i.Jump, strings.Join(sorted(i.Tags), " "), strings.Join(i.HostKeys, " "), fmt.Sprint(i.Meta["region"]), fmt.Sprint(i.Meta["instance_id"])}
		want := []string{e.Role, host, jump, strings.Join(tags, " "), e.HostKey, e.Region, e.InstanceID}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: system, host, jump, tags, host key, region, id =\n %q\nwant\n %q", e.Name, got, want)
		}
	}
	// Everything behind a bastion but the public web servers of us-*.
	if jumped != 200-4-40 {
		t.Errorf("%d hosts behind a bastion, want %d", jumped, 200-4-40)
	}
	for name, r := range pulumi.CIRunners {
		i := inv.Instances[name]
		if i == nil {
			t.Errorf("no instance %s", name)
			continue
		}
		got := []any{i.System, i.Host, i.Jump, sorted(i.Tags), i.HostKeys, i.Meta, i.SSH}
		want := []any{"runner", r.PublicIP, "", sorted([]string{"arch=" + r.Labels["arch"], "pool=ci", "pulumi"}), []string{r.HostKey},
			map[string]any{"zone": r.Zone}, map[string]any{"ServerAliveInterval": float64(30)}}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: system, host, jump, tags, host keys, meta, ssh =\n %v\nwant\n %v", name, got, want)
		}
	}
	web, err := inv.Select([]string{"@role=web"})
	if err != nil || len(web) != 80 {
		t.Errorf("@role=web selects %d instances (%v), want 80", len(web), err)
	}
	staging, err := inv.Select([]string{"@env=staging", "@pool=ci"})
	if err != nil || len(staging) != 54 {
		t.Errorf("@env=staging @pool=ci selects %d instances (%v), want 54", len(staging), err)
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func sorted(xs []string) []string { return slices.Sorted(slices.Values(xs)) }

// Outputs nix-hive cannot make instances of are errors that name the
// output, the elements (by index or key, and name or address) and what to
// change; they reach the user through nix-hive's evaluation.
func TestImportErrors(t *testing.T) {
	nixtest.Require(t)
	const tf = `{"hosts": {"sensitive": true, "type": ["list", ["object", {"name": "string", "ip": "string"}]], "value": [
  {"name": "web-1", "ip": "10.0.0.1"},
  {"name": "web-2", "ip": null, "private_ip": ""},
  {"name": "web-1", "ip": "10.0.0.3"},
  {"ip": "10.0.0.4"}
]}, "vpc": {"sensitive": false, "type": "string", "value": "vpc-1"}}`
	const pulumi = `{"runners": {"a": {"ip": "10.1.0.1", "pool": "x"}, "b": {"ip": "10.1.0.2", "pool": "x"}}, "token": "[secret]"}`
	tests := []struct {
		name  string
		hive  string // the hive's instances
		wants []string
	}{
		{"collision, missing address and name",
			`lib.fromTerraform { json = ./tf.json; system = "s"; }`,
			[]string{
				`terraform output "hosts": [0] (10.0.0.1) and [2] (10.0.0.3) are both named "web-1"`,
				`terraform output "hosts"[1] ("web-2"): no address: none of host, ip, public_ip,`,
				`terraform output "hosts"[3] (address "10.0.0.4"): no name: none of name, hostname`,
			}},
		{"address picked by the hive",
			`lib.fromTerraform { json = ./tf.json; system = "s"; host = "private_ip"; filter = e: e ? name && e.name == "web-2"; }`,
			[]string{`terraform output "hosts"[1] ("web-2"): no address: none of private_ip is set (set ` + "`host`" + ` to pick one)`}},
		{"three of a name",
			`lib.fromTerraform { json = ./tf.json; system = "s"; name = _: "x"; host = _: "h"; }`,
			[]string{`terraform output "hosts": [0] (h), [1] (h), [2] (h) and [3] (h) are all named "x"`}},
		{"no system",
			`lib.fromTerraform { json = ./tf.json; filter = e: e.ip or null == "10.0.0.1"; }`,
			[]string{`terraform output "hosts"[0] ("web-1"): no system: set ` + "`system`"}},
		{"unknown output",
			`lib.fromTerraform { json = ./tf.json; output = "host"; system = "s"; }`,
			[]string{`terraform output "host" not found (outputs: hosts, vpc)`}},
		{"not hosts",
			`lib.fromTerraform { json = ./tf.json; output = "vpc"; system = "s"; }`,
			[]string{`terraform output "vpc": expected a list or an object of hosts, got a string ("vpc-1")`}},
		{"unknown argument",
			`lib.fromTerraform { json = ./tf.json; systems = "s"; }`,
			[]string{`fromTerraform: unknown argument systems (known: json, output, name, host, system,`}},
		{"pulumi keyed collision",
			`lib.fromPulumi { json = ./pulumi.json; output = "runners"; system = "s"; name = e: e.pool; }`,
			[]string{`pulumi output "runners": ["a"] (10.1.0.1) and ["b"] (10.1.0.2) are both named "x"`}},
		{"pulumi secret",
			`lib.fromPulumi { json = ./pulumi.json; output = "token"; system = "s"; }`,
			[]string{`pulumi output "token" is a secret: export it with ` + "`pulumi stack output --json --show-secrets`"}},
		{"pulumi path",
			`lib.fromPulumi { json = ./pulumi.json; output = [ "runners" "c" ]; system = "s"; }`,
			[]string{`pulumi output "runners".c: no attribute "c" in an object (it has: a, b)`}},
		{"merged sources",
			`lib.mergeInstances {
  terraform = lib.fromTerraform { json = ./tf.json; system = "s"; filter = e: e.ip or null == "10.0.0.1"; };
  pulumi = lib.fromPulumi { json = ./pulumi.json; output = "runners"; system = "s"; name = e: if e.ip == "10.1.0.1" then "web-1" else "b"; };
}`,
			[]string{`mergeInstances: instance "web-1" comes from both pulumi and terraform`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, dir, "tf.json", tf)
			write(t, dir, "pulumi.json", pulumi)
			write(t, dir, "hive.nix", `{ lib }: {
  systems.s.toplevel = derivation { name = "s"; system = "x86_64-linux"; builder = "/bin/sh"; };
  instances = `+tt.hive+`;
}`)
			_, err := openHive(t, dir)
			if err == nil {
				t.Fatal("the hive evaluated")
			}
			msg := err.Error()
			for _, w := range tt.wants {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not say\n %s\nit is\n %s", w, msg)
				}
			}
		})
	}
}

func write(t *testing.T, dir, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The shapes outputs come in and what the mapping makes of them, evaluated
// with lib/import.nix alone.
func TestImportShapes(t *testing.T) {
	nixtest.Require(t)
	lib, _ := filepath.Abs("import.nix")
	example, _ := filepath.Abs("../examples/import")
	key1 := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHS4G6s2Yhlm/qf6Y3t55ce+X83CrOmCrifGWygIEGPO"
	key2 := "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7"
	tests := []struct {
		name string
		expr string // over fromTerraform, fromPulumi
		want string // JSON
	}{
		{"terraform output -json NAME: a keyed map of addresses",
			`fromTerraform { json = { web-1 = "10.0.0.1"; web-2 = "10.0.0.2"; }; system = "web"; }`,
			`{"web-1": {"host": "10.0.0.1", "system": "web"}, "web-2": {"host": "10.0.0.2", "system": "web"}}`},
		{"a keyed map of objects: the key names, not the object's name",
			`fromTerraform { json = { hosts = { value = { a = { name = "ip-10-0-0-1"; ip = "10.0.0.1"; system = "x"; }; }; }; }; }`,
			`{"a": {"host": "10.0.0.1", "system": "x"}}`},
		{"terraform show -json (state), JSON text",
			`fromTerraform { system = "s"; json = builtins.toJSON { format_version = "1.0"; terraform_version = "1.9.0"; values.outputs.hosts = { sensitive = false; value = [ { hostname = "h"; public_ip = ""; private_ip = "10.0.0.9"; zone = "z"; } ]; }; }; }`,
			`{"h": {"host": "10.0.0.9", "system": "s", "meta": {"zone": "z"}}}`},
		{"sensitive output: no meta unless asked",
			`fromTerraform { json = { hosts = { sensitive = true; value = [ { name = "a"; ip = "1.2.3.4"; password = "p"; region = "r"; } ]; }; }; system = "s"; } // fromTerraform { json = { hosts = { sensitive = true; value = [ { name = "b"; ip = "1.2.3.5"; password = "p"; region = "r"; } ]; }; }; system = "s"; meta = [ "region" ]; }`,
			`{"a": {"host": "1.2.3.4", "system": "s"}, "b": {"host": "1.2.3.5", "system": "s", "meta": {"region": "r"}}}`},
		{"tags: maps, lists, plain attributes, booleans, numbers",
			`fromTerraform { json = [ { name = "a"; ip = "x"; tags = { env = "prod"; canary = true; off = false; none = null; shard = 3; }; role = "web"; roles = [ "lb" "lb" ]; } ]; system = "s"; meta = null; addTags = [ "tf" ]; }`,
			`{"a": {"host": "x", "system": "s", "tags": ["canary", "env=prod", "shard=3", "role=web", "lb", "tf"]}}`},
		{"tagStyle value and a function",
			`{ v = fromTerraform { json = [ { name = "a"; ip = "x"; labels = { env = "prod"; }; role = "web"; } ]; system = "s"; meta = null; tagStyle = "value"; };
			   f = fromTerraform { json = [ { name = "a"; ip = "x"; labels = { env = "prod"; Name = "a"; }; } ]; system = "s"; meta = null; tagStyle = k: v: if k == "Name" then null else "${k}:${v}"; }; }`,
			`{"v": {"a": {"host": "x", "system": "s", "tags": ["prod", "web"]}}, "f": {"a": {"host": "x", "system": "s", "tags": ["env:prod"]}}}`},
		{"host keys: a multi-line string, a list; ports as strings",
			`fromTerraform { json = [ { name = "a"; ip = "x"; host_key = "  ` + key1 + `\n` + key2 + ` root@a\n\n"; ssh_port = "2222"; } { name = "b"; ip = "y"; hostKeys = [ "` + key1 + `" ]; } ]; system = "s"; meta = null; }`,
			`{"a": {"host": "x", "system": "s", "hostKey": ["` + key1 + `", "` + key2 + ` root@a"], "port": 2222}, "b": {"host": "y", "system": "s", "hostKey": ["` + key1 + `"]}}`},
		{"jump by name, by address, to itself; an unknown jump is left for the hive to report",
			`fromTerraform { json = [ { name = "bastion"; ip = "203.0.113.1"; bastion = "203.0.113.1"; } { name = "a"; ip = "10.0.0.1"; bastion = "203.0.113.1"; } { name = "b"; ip = "10.0.0.2"; jump = "bastion"; } { name = "c"; ip = "10.0.0.3"; jump = "elsewhere"; } ]; system = "s"; meta = null; }`,
			`{"bastion": {"host": "203.0.113.1", "system": "s"}, "a": {"host": "10.0.0.1", "system": "s", "jump": "bastion"}, "b": {"host": "10.0.0.2", "system": "s", "jump": "bastion"}, "c": {"host": "10.0.0.3", "system": "s", "jump": "elsewhere"}}`},
		{"field specs: nested attribute, first set, functions; filter; map renames",
			`fromTerraform { json = [ { id = "1"; net = { private = "10.0.0.1"; }; kind = "db"; } { id = "2"; net = { public = "1.2.3.4"; private = "10.0.0.2"; }; kind = "web"; } { id = "3"; kind = "skip"; } ];
			   name = e: "node-${e.id}"; host = [ "net.public" "net.private" ]; system = e: e.kind; tags = e: [ e.kind ]; meta = [ "id" ];
			   filter = e: e.kind != "skip"; map = e: i: i // { name = "${i.system}-${e.id}"; user = "deploy"; }; }`,
			`{"db-1": {"host": "10.0.0.1", "system": "db", "tags": ["db"], "meta": {"id": "1"}, "user": "deploy"}, "web-2": {"host": "1.2.3.4", "system": "web", "tags": ["web"], "meta": {"id": "2"}, "user": "deploy"}}`},
		{"pulumi: camelCase defaults, an output path, a single output's value",
			`{ stack = fromPulumi { json = { cluster = { nodes = [ { hostName = "n1"; publicIp = null; privateIp = "10.1.0.1"; sshUser = "admin"; } ]; }; project = "p"; }; output = [ "cluster" "nodes" ]; system = "k8s"; meta = null; };
			   one = fromPulumi { json = [ { name = "n2"; privateIp = "10.1.0.2"; } ]; system = "k8s"; }; }`,
			`{"stack": {"n1": {"host": "10.1.0.1", "system": "k8s", "user": "admin"}}, "one": {"n2": {"host": "10.1.0.2", "system": "k8s"}}}`},
		{"JSON text over several lines, a file name",
			`{ text = fromTerraform { json = "\n  [\n    { \"name\": \"a\", \"ip\": \"x\" }\n  ]\n"; system = "s"; };
			   file = fromPulumi { json = "` + example + `/pulumi.json"; output = "ciRunners"; filter = e: e.name == "ci-runner-1"; host = "privateIp"; hostKey = null; system = "s"; meta = null; tags = null; }; }`,
			`{"text": {"a": {"host": "x", "system": "s"}}, "file": {"ci-runner-1": {"host": "10.40.0.11", "system": "s"}}}`},
		{"mergeInstances",
			`mergeInstances { a = { x = { system = "s"; }; }; b = { y = { system = "t"; }; }; }`,
			`{"x": {"system": "s"}, "y": {"system": "t"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			expr := "with import " + lib + "; " + tt.expr
			out, err := exec.Command("nix", "eval", "--json", "--impure", "--expr", expr).CombinedOutput()
			if err != nil {
				t.Fatalf("nix eval: %v\n%s", err, out)
			}
			var got, want any
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("decode %s: %v", out, err)
			}
			if err := json.Unmarshal([]byte(tt.want), &want); err != nil {
				t.Fatalf("test's want: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				g, _ := json.Marshal(got)
				t.Errorf("got  %s\nwant %s", g, tt.want)
			}
		})
	}
}
