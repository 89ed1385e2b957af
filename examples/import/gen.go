//go:build ignore

// gen writes the sample outputs this example imports, shaped as the tools
// print them: terraform.json as `terraform output -json` prints a
// list(object) output `hosts` (4 regions × 50 hosts), pulumi.json as
// `pulumi stack output --json` prints a small stack. Host keys are real
// ed25519 public keys derived from each name, so the files are the same
// on every run:
//
//	go run ./examples/import/gen.go examples/import
package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

func hostKey(name string) string {
	seed := sha256.Sum256([]byte("nix-hive import example " + name))
	pub := ed25519.NewKeyFromSeed(seed[:]).Public().(ed25519.PublicKey)
	var b bytes.Buffer
	for _, part := range [][]byte{[]byte("ssh-ed25519"), pub} {
		binary.Write(&b, binary.BigEndian, uint32(len(part)))
		b.Write(part)
	}
	return "ssh-ed25519 " + base64.StdEncoding.EncodeToString(b.Bytes())
}

func instanceID(name string) string {
	h := sha256.Sum256([]byte(name))
	return fmt.Sprintf("i-0%x", h[:8])
}

type host struct {
	AZ         string            `json:"az"`
	Bastion    *string           `json:"bastion"`
	HostKey    string            `json:"host_key"`
	InstanceID string            `json:"instance_id"`
	Name       string            `json:"name"`
	PrivateIP  string            `json:"private_ip"`
	PublicIP   *string           `json:"public_ip"`
	Region     string            `json:"region"`
	Role       string            `json:"role"`
	Tags       map[string]string `json:"tags"`
}

func write(path string, v any) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		panic(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func main() {
	dir := "."
	if len(os.Args) > 1 {
		dir = os.Args[1]
	}
	hosts := terraformHosts()
	objectType := []any{"object", map[string]any{
		"az": "string", "bastion": "string", "host_key": "string", "instance_id": "string",
		"name": "string", "private_ip": "string", "public_ip": "string", "region": "string",
		"role": "string", "tags": []any{"map", "string"},
	}}
	write(filepath.Join(dir, "terraform.json"), map[string]any{
		"hosts": map[string]any{"sensitive": false, "type": []any{"list", objectType}, "value": hosts},
		"vpc_ids": map[string]any{"sensitive": false, "type": []any{"map", "string"}, "value": map[string]string{
			"ap-southeast-1": "vpc-0d5e2f1a", "eu-west-1": "vpc-0c4d1e09", "us-east-1": "vpc-0a2b3c4d", "us-west-2": "vpc-0b3c4d5e",
		}},
		"db_admin_password": map[string]any{"sensitive": true, "type": "string", "value": "example-not-a-secret"},
	})

	runners := pulumiRunners()
	write(filepath.Join(dir, "pulumi.json"), map[string]any{
		"ciRunners":   runners,
		"network":     "ci-net",
		"project":     "acme-ci",
		"registryKey": "[secret]",
	})
}

// terraformHosts are the hosts of 4 regions × 5 roles: bastions and, in
// some regions, web hosts with public addresses, the rest behind their
// region's bastion.
func terraformHosts() []host {
	regions := []struct {
		name, short, env string
		publicWeb        bool
	}{
		{"us-east-1", "use1", "prod", true},
		{"us-west-2", "usw2", "staging", true},
		{"eu-west-1", "euw1", "prod", false},
		{"ap-southeast-1", "apse1", "prod", false},
	}
	roles := []struct {
		name, team string
		count      int
	}{
		{"bastion", "platform", 1},
		{"web", "storefront", 20},
		{"app", "checkout", 15},
		{"db", "data", 8},
		{"cache", "data", 6},
	}
	var hosts []host
	webPublic := 10
	for r, region := range regions {
		bastion := fmt.Sprintf("203.0.113.%d", 10+r)
		for s, role := range roles {
			for n := 1; n <= role.count; n++ {
				name := fmt.Sprintf("%s-%s-%02d", region.short, role.name, n)
				if role.count == 1 {
					name = fmt.Sprintf("%s-%s", region.short, role.name)
				}
				h := host{
					AZ:         fmt.Sprintf("%s%c", region.name, 'a'+rune((n-1)%3)),
					HostKey:    hostKey(name),
					InstanceID: instanceID(name),
					Name:       name,
					PrivateIP:  fmt.Sprintf("10.%d.%d.%d", 10+r, s, 10+n),
					Region:     region.name,
					Role:       role.name,
					Tags:       map[string]string{"env": region.env, "team": role.team},
				}
				switch {
				case role.name == "bastion":
					h.PublicIP = &bastion
				case role.name == "web" && region.publicWeb:
					ip := fmt.Sprintf("198.51.100.%d", webPublic)
					webPublic++
					h.PublicIP = &ip
				default:
					b := bastion
					h.Bastion = &b
				}
				hosts = append(hosts, h)
			}
		}
	}
	return hosts
}

type runner struct {
	HostKey   string            `json:"hostKey"`
	Labels    map[string]string `json:"labels"`
	PrivateIP string            `json:"privateIp"`
	PublicIP  string            `json:"publicIp"`
	Zone      string            `json:"zone"`
}

// pulumiRunners are the stack's four CI runners.
func pulumiRunners() map[string]runner {
	runners := map[string]runner{}
	for n := 1; n <= 4; n++ {
		name := fmt.Sprintf("ci-runner-%d", n)
		arch := "x86_64"
		if n == 4 {
			arch = "aarch64"
		}
		runners[name] = runner{
			HostKey:   hostKey(name),
			Labels:    map[string]string{"pool": "ci", "arch": arch},
			PrivateIP: fmt.Sprintf("10.40.0.%d", 10+n),
			PublicIP:  fmt.Sprintf("192.0.2.%d", 20+n),
			Zone:      fmt.Sprintf("europe-west4-%c", 'a'+rune(n%3)),
		}
	}
	return runners
}
