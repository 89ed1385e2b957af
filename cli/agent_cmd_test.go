package cli_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/cli"
	"github.com/nix-hive/nix-hive/internal/nixtest"
)

var (
	moduleOption = regexp.MustCompile(`nix-hive\.[a-z][A-Za-z.]*[A-Za-z]`)
	agentInstall = regexp.MustCompile("nix-hive\\s+agent\\s*>\\s*([^\\s;`]+)")
)

// `nix-hive agent --help` and README's "Non-root logins and sudo" name
// the module's options as lib/module.nix declares them (evaluated with
// nixpkgs' module system), and the same install path and sudo rule for
// hosts without the module.
func TestAgentHelpMatchesModuleAndREADME(t *testing.T) {
	nixtest.Require(t)
	var out, errOut bytes.Buffer
	if code := cli.Main("test", []string{"agent", "--help"}, &out, &errOut); code != 0 {
		t.Fatalf("agent --help: exit %d: %s", code, errOut.String())
	}
	help := out.String()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(readme), "### Non-root logins and sudo")
	section, _, _ = strings.Cut(section, "\n## ")
	if section == "" {
		t.Fatal(`README has no "Non-root logins and sudo" section`)
	}

	names := map[string][]string{} // option: where it is named
	for where, text := range map[string]string{"agent --help": help, "README": section} {
		found := moduleOption.FindAllString(text, -1)
		if len(found) == 0 {
			t.Errorf("%s names no module option", where)
		}
		for _, o := range found {
			names[o] = append(names[o], where)
		}
	}
	var list []string
	for o := range names {
		list = append(list, strings.TrimPrefix(o, "nix-hive."))
	}
	declared := moduleDeclares(t, list)
	for o, where := range names {
		if !declared[strings.TrimPrefix(o, "nix-hive.")] {
			t.Errorf("%s names %s, which lib/module.nix does not declare", strings.Join(where, " and "), o)
		}
	}

	inHelp, inREADME := agentInstall.FindStringSubmatch(help), agentInstall.FindStringSubmatch(section)
	if inHelp == nil || inREADME == nil {
		t.Fatalf("install path: help %q, README %q; want both to show `nix-hive agent > PATH`", inHelp, inREADME)
	}
	if inHelp[1] != inREADME[1] {
		t.Errorf("agent --help installs to %s, README to %s", inHelp[1], inREADME[1])
	}
	rule := "ALL=(root) " + inHelp[1]
	if !strings.Contains(help, rule) || !strings.Contains(strings.Join(strings.Fields(section), " "), rule) {
		t.Errorf("help and README must both allow %q in sudoers", rule)
	}
}

// moduleDeclares reports, for each option path under nix-hive
// ("sudo.user"), whether lib/module.nix declares it.
func moduleDeclares(t *testing.T, paths []string) map[string]bool {
	t.Helper()
	nixpkgs := nixtest.Nixpkgs(t)
	module, _ := filepath.Abs("../lib/module.nix")
	list, _ := json.Marshal(paths)
	expr := `let
  lib = import ` + nixpkgs + `/lib;
  options = (import ` + nixpkgs + `/nixos/lib/eval-config.nix { modules = [ ` + module + ` ]; }).options.nix-hive;
in lib.genAttrs (builtins.fromJSON ''` + string(list) + `'') (p: (lib.attrByPath (lib.splitString "." p) { } options)._type or null == "option")`
	out, err := exec.Command("nix", "eval", "--json", "--impure", "--expr", expr).CombinedOutput()
	if err != nil {
		t.Fatalf("evaluate lib/module.nix's options: %v\n%s", err, out)
	}
	got := map[string]bool{}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
	return got
}
