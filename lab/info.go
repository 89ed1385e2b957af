package lab

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Info describes a running lab to programs outside the process that runs
// it (a demo script, a test binary): it is the content of lab.json.
type Info struct {
	Dir        string     `json:"dir"`
	ClientKey  string     `json:"clientKey"`
	KnownHosts string     `json:"knownHosts"` // path of the known_hosts file
	SSHConfig  string     `json:"sshConfig"`  // path of the OpenSSH client config
	HiveNix    string     `json:"hiveNix"`    // path of lab.nix
	Netns      string     `json:"netns,omitempty"`
	Hosts      []HostInfo `json:"hosts"`
}

// HostInfo is one host in lab.json.
type HostInfo struct {
	Name         string `json:"name"`
	Addr         string `json:"addr"`
	Port         int    `json:"port"`
	HostKey      string `json:"hostKey"`
	Root         string `json:"root"`
	Jump         string `json:"jump,omitempty"`
	InternalAddr string `json:"internalAddr,omitempty"`
	Nix          string `json:"nix"` // bin directory of the host's Nix
}

// WriteInfo writes HiveNix() to dir/lab.nix and then the lab's Info to
// dir/lab.json. Both appear atomically, lab.json last, so whoever waits for
// lab.json finds lab.nix complete too.
func (l *Lab) WriteInfo(dir string) error {
	info := Info{
		Dir:        l.Dir,
		ClientKey:  l.ClientKey,
		KnownHosts: l.KnownHostsFile,
		SSHConfig:  l.SSHConfigFile,
		HiveNix:    filepath.Join(dir, "lab.nix"),
		Netns:      l.Netns,
	}
	if abs, err := filepath.Abs(info.HiveNix); err == nil {
		info.HiveNix = abs
	}
	l.mu.Lock()
	for _, h := range l.Hosts {
		info.Hosts = append(info.Hosts, HostInfo{
			Name: h.Name, Addr: h.Addr, Port: h.Port, HostKey: h.HostKey,
			Root: h.Root, Jump: h.Jump, InternalAddr: h.InternalAddr, Nix: h.Nix,
		})
	}
	l.mu.Unlock()
	data, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return fmt.Errorf("lab.json: %w", err)
	}
	if err := writeFileAtomic(info.HiveNix, []byte(l.HiveNix()), 0o644); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, "lab.json"), append(data, '\n'), 0o644)
}

// ReadInfo reads a lab.json written by WriteInfo.
func ReadInfo(path string) (*Info, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read lab description: %w", err)
	}
	var info Info
	if err := json.Unmarshal(data, &info); err != nil {
		return nil, fmt.Errorf("read lab description %s: %w", path, err)
	}
	return &info, nil
}
