package cli

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"os"
	"regexp"
	"slices"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/internal/cmdline"
	"github.com/nix-hive/nix-hive/plan"
)

// prebuilt reads deploy --systems FILE (and --from URL): what `nix-hive
// build` printed, or a map of system name to store path.
func prebuilt(file, from string) (*plan.Prebuilt, error) {
	if file == "" {
		if from != "" {
			return nil, cmdline.UsageError{Err: fmt.Errorf("--from needs --systems FILE: it says where the paths that file names are fetched from")}
		}
		return nil, nil
	}
	if from != "" {
		if err := checkCacheURL(from); err != nil {
			return nil, cmdline.UsageError{Err: fmt.Errorf("--from %q %w", from, err)}
		}
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--systems: %w", err)
	}
	paths, err := parseSystems(data)
	if err != nil {
		return nil, fmt.Errorf("--systems %s: %w", file, err)
	}
	return &plan.Prebuilt{File: file, Paths: paths, From: from}, nil
}

// storePath is a store path's shape: no subpath, nothing a shell or nix
// would read otherwise.
var storePath = regexp.MustCompile(`^/nix/store/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+._?=-]+$`)

// parseSystems reads `nix-hive build`'s output ({"systems": {NAME:
// {"outPath": PATH, "profilePaths": {PROFILE: PATH}, ...}}}) or a plain
// {NAME: PATH} map.
func parseSystems(data []byte) (map[string]eval.Built, error) {
	var build struct {
		Systems map[string]struct {
			OutPath  string            `json:"outPath"`
			Profiles map[string]string `json:"profilePaths"`
		} `json:"systems"`
	}
	out := map[string]eval.Built{}
	if err := json.Unmarshal(data, &build); err == nil && build.Systems != nil {
		for s, b := range build.Systems {
			out[s] = eval.Built{System: s, OutPath: b.OutPath, Profiles: b.Profiles}
		}
	} else {
		var paths map[string]string
		if err := json.Unmarshal(data, &paths); err != nil {
			return nil, fmt.Errorf("neither nix-hive build's output nor a map of system names to store paths: %w", err)
		}
		for s, p := range paths {
			out[s] = eval.Built{System: s, OutPath: p}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("names no system")
	}
	for _, s := range slices.Sorted(maps.Keys(out)) {
		if !storePath.MatchString(out[s].OutPath) {
			return nil, fmt.Errorf("system %s: %q is not a store path (/nix/store/HASH-NAME)", s, out[s].OutPath)
		}
		for _, n := range slices.Sorted(maps.Keys(out[s].Profiles)) {
			if p := out[s].Profiles[n]; !storePath.MatchString(p) {
				return nil, fmt.Errorf("system %s: profile %s: %q is not a store path (/nix/store/HASH-NAME)", s, n, p)
			}
		}
	}
	return out, nil
}

// checkCacheURL checks --from: a binary cache nix copy reads (file,
// http, https, ssh, ssh-ng), an ssh one's host and login as the hive's
// store URLs are checked.
func checkCacheURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("is not a URL: %w", err)
	}
	switch u.Scheme {
	case "file", "http", "https", "ssh", "ssh-ng":
		return eval.CheckStoreURL(s)
	}
	return fmt.Errorf("is not a binary cache URL nix copy reads (file://, http://, https://, ssh://, ssh-ng://)")
}
