package mux

import (
	"strings"
	"testing"
)

// The command lines Nix's ssh stores give ssh (libstore/ssh.cc), and
// what OpenSSH would make of them.
func TestParseSSH(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want sshCommand
		err  string
	}{
		{name: "nix 2.8", args: []string{"app-1", "-x", "-a", "-F", "/tmp/c", "nix-store", "--serve", "--write"},
			want: sshCommand{dest: "app-1", command: "nix-store --serve --write"}},
		{name: "nix 2.24", args: []string{"app-1", "-x", "-F", "/tmp/c", "-oPermitLocalCommand=yes", "-oLocalCommand=echo started", "--", "nix-store", "--serve", "--write"},
			want: sshCommand{dest: "app-1", command: "nix-store --serve --write", localCommand: "echo started"}},
		{name: "nix 2.24 asks for a master", args: []string{"-O", "check", "app-1", "-F", "/tmp/c", "-oPermitLocalCommand=yes"},
			want: sshCommand{dest: "app-1", control: "check"}},
		{name: "a local command needs permission", args: []string{"app-1", "-oLocalCommand=echo started", "--", "true"},
			want: sshCommand{dest: "app-1", command: "true"}},
		{name: "joined flags and a user", args: []string{"-xaCp22", "-l", "root", "root@nix-hive-0011", "-i", "/k", "-v", "sudo", "nix-store", "--serve"},
			want: sshCommand{dest: "nix-hive-0011", command: "sudo nix-store --serve"}},
		{name: "options in the -o KEY VALUE form", args: []string{"-o", "PermitLocalCommand yes", "-o", "LocalCommand=true", "app-1", "x"},
			want: sshCommand{dest: "app-1", command: "x", localCommand: "true"}},
		{name: "no command", args: []string{"app-1", "-x"}, err: "no command"},
		{name: "forwarding refused", args: []string{"-L", "1:a:2", "app-1", "true"}, err: "option -L is not supported"},
		{name: "background refused", args: []string{"-f", "app-1", "true"}, err: "option -f is not supported"},
		{name: "missing argument", args: []string{"app-1", "-p"}, err: "option -p needs an argument"},
		{name: "no destination", args: []string{"-x"}, err: "no destination"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSSH(tt.args)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parseSSH(%q) = %+v, %v; want error %q", tt.args, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseSSH(%q) = %+v, %v; want %+v", tt.args, got, err, tt.want)
			}
		})
	}
}
