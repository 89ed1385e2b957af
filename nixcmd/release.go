package nixcmd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Nix releases say some things differently. nix-hive reads them through
// the functions here, which accept the form of every release it supports
// (2.8 to 2.24; docs/design.md, "Nix releases"), so a deploy host and
// hosts on different releases work together and nothing depends on which
// one a host runs.

// PathInfo is one path as `nix path-info --json` describes it.
type PathInfo struct {
	Path       string   `json:"path"`
	Valid      bool     `json:"-"`
	NarSize    uint64   `json:"narSize"`
	NarHash    string   `json:"narHash"`
	References []string `json:"references"`
	Deriver    string   `json:"deriver"`
	Signatures []string `json:"signatures"`
}

// DecodePathInfo reads the output of `nix path-info --json`: up to Nix
// 2.18 a list of objects with a "path" field (an invalid path has
// "valid": false), since 2.19 an object keyed by path (an invalid path is
// null). The result is sorted by path.
func DecodePathInfo(data []byte) ([]PathInfo, error) {
	data = bytes.TrimSpace(data)
	var infos []PathInfo
	switch {
	case bytes.HasPrefix(data, []byte("[")):
		var list []struct {
			PathInfo
			Valid *bool `json:"valid"`
		}
		if err := json.Unmarshal(data, &list); err != nil {
			return nil, fmt.Errorf("decode nix path-info --json (list): %w", err)
		}
		for _, e := range list {
			e.PathInfo.Valid = e.Valid == nil || *e.Valid
			infos = append(infos, e.PathInfo)
		}
	case bytes.HasPrefix(data, []byte("{")):
		var byPath map[string]*PathInfo
		if err := json.Unmarshal(data, &byPath); err != nil {
			return nil, fmt.Errorf("decode nix path-info --json (object): %w", err)
		}
		for p, i := range byPath {
			if i == nil {
				i = &PathInfo{}
			} else {
				i.Valid = true
			}
			i.Path = p
			infos = append(infos, *i)
		}
	default:
		return nil, fmt.Errorf("decode nix path-info --json: neither a list nor an object: %.40q", data)
	}
	slices.SortFunc(infos, func(a, b PathInfo) int { return strings.Compare(a.Path, b.Path) })
	return infos, nil
}

// PathInfo runs `nix path-info --json args...` (paths, and flags such as
// --recursive or --store URL) and decodes it whatever the release. It asks
// the store alone: with --offline, a path not built here is not looked up
// in the substituters (cache.nixos.org by default, which on a machine
// without a network stalls every plan for seconds).
func (r *Runner) PathInfo(ctx context.Context, args ...string) ([]PathInfo, error) {
	out, err := r.Run(ctx, "nix", append([]string{"path-info", "--offline", "--json"}, args...)...)
	if err != nil && len(bytes.TrimSpace(out)) == 0 {
		// An invalid path makes nix exit non-zero, yet it still describes
		// every path; only an empty answer is a failure.
		return nil, err
	}
	return DecodePathInfo(out)
}

// connectFailure matches Nix's report that it could not reach a host over
// SSH: "cannot connect to 'HOST'" up to 2.18, "failed to start SSH
// connection to 'HOST'" since.
var connectFailure = regexp.MustCompile(`(?:cannot connect to|failed to start SSH connection to) '([^']*)'`)

// SSHConnectFailure reports whether stderr of a nix command says it could
// not reach a host over SSH, and what ssh itself said about it (the line
// before Nix's, e.g. "ssh: connect to host 10.0.0.1 port 22: Connection
// refused"), if anything.
func SSHConnectFailure(stderr string) (detail string, ok bool) {
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	for i, l := range lines {
		if !connectFailure.MatchString(l) {
			continue
		}
		for j := i - 1; j >= 0; j-- {
			prev := strings.TrimSpace(lines[j])
			if prev != "" && !strings.HasPrefix(prev, "warning:") {
				return prev, true
			}
		}
		return "", true
	}
	return "", false
}

// BadSubstitute names the store path a substitution refused because the
// substituter's copy of it is not what it claims to be, and how: "hash"
// (its content does not match its hash: changed after it was made) or
// "signature" (no signature by a trusted key); "" when stderr says
// neither.
func BadSubstitute(stderr string) (path, kind string) {
	for _, line := range strings.Split(stderr, "\n") {
		m := quotedStorePath.FindStringSubmatch(line)
		switch {
		case m == nil:
		case strings.Contains(line, "hash mismatch"):
			return m[1], "hash"
		case SignatureRefused(line):
			return m[1], "signature"
		}
	}
	return "", ""
}

var quotedStorePath = regexp.MustCompile(`'(/nix/store/[^'/]+)'`)

// SignatureRefused reports whether stderr of a substitution says the
// substitute was refused for want of a trusted signature (the same words
// in 2.8 and 2.24; older and newer forms are accepted too).
func SignatureRefused(stderr string) bool {
	return strings.Contains(stderr, "not signed by any of the keys") ||
		strings.Contains(stderr, "lacks a signature by a trusted key") ||
		strings.Contains(stderr, "valid signature")
}
