package host

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/nix-hive/nix-hive/transport"
)

const profile = "/nix/var/nix/profiles/system"

// queryProgram prints what the host runs as key=value lines (see
// parseState). It needs no privileges and always exits 0; what goes
// wrong shows as empty values, so its stderr is dropped once, not per
// command. Every process it spares is spared on each host of every status
// and deploy, and on the lab a query's processes cost the host as much as
// the session that runs it: it reads files with the shell's read, not
// cat; both links with one readlink (whose output follows its operands; a
// link that vanishes between the test and readlink leaves one word, and
// then each is read alone); and the profile's store path with cd -P
// rather than readlink -f; and the activation lock with flock on a
// descriptor the shell opens, rather than with flock running true, and
// only when the job /run/nix-hive/current names has not said "done"
// (a job writes that last, still holding the lock; ReadState reads the
// same files the same way).
const queryProgram = `p=` + profile + ` c=/run/current-system
{
line() { v=; read -r v <"$2"; printf "%s=%s\n" "$1" "$v"; }
set -f; set --
[ -L $c ] && [ -L $p ] && set -- $(readlink $c $p)
[ $# = 2 ] || set -- "$(readlink $c)" "$(readlink $p)"
echo "active=$1"; echo "link=$2"
cd -P $p && echo "profile=$PWD" && cd / || { [ -e $p ] && echo "profile=$(readlink -f $p)"; }
line last /nix/var/nix-hive/last
line profiles /nix/var/nix-hive/profiles
l=/run/nix-hive/activation.lock
if [ -e $l ]; then
  j= s=
  read -r j </run/nix-hive/current
  case $j in ''|*/*|.|..) ;; *) read -r s </run/nix-hive/jobs/$j/state ;; esac
  case $s in
  done*) ;;
  *) if command -v flock >/dev/null && ! flock -n 9 9<$l; then line running /run/nix-hive/current; fi ;;
  esac
fi
line boot /proc/sys/kernel/random/boot_id
line rebootmark /run/nix-hive/reboot
if command -v gzip >/dev/null; then echo gzip=1; fi
t=
while IFS= read -r l; do
  l=${l%%#*}
  case $l in *trusted-public-keys*=*) set -- ${l%%=*}; case $1 in trusted-public-keys|extra-trusted-public-keys) t="$t ${l#*=}" ;; esac ;; esac
done </etc/nix/nix.conf && echo "trusted=$t"
} 2>/dev/null
`

// State is what a host says about itself.
type State struct {
	Active     string `json:"active"`     // /run/current-system
	Generation int    `json:"generation"` // of the system profile, 0 when none
	Profile    string `json:"profile"`    // what the profile points at
	// Last is the last activation nix-hive ran there, if any.
	Last *LastActivation `json:"last,omitempty"`
	// Profiles are the profiles beside the system one that nix-hive set
	// last (/nix/var/nix-hive/profiles), as ProfileWords writes them.
	Profiles string `json:"profiles,omitempty"`
	// Running is the id of an activation job running now.
	Running    string `json:"running,omitempty"`
	BootID     string `json:"-"`
	RebootMark string `json:"-"`
	// Gzip says the host has gzip: the job script goes there compressed.
	Gzip bool `json:"-"`
	// Trusted are the keys the host's /etc/nix/nix.conf trusts
	// (trusted-public-keys and extra-trusted-public-keys), when TrustRead.
	Trusted   []string `json:"-"`
	TrustRead bool     `json:"-"`
}

// ProfileList is Profiles, one by one.
func (hs State) ProfileList() []Profile { return parseProfiles(hs.Profiles) }

// LastActivation is a host's record of the last activation nix-hive ran
// on it (/nix/var/nix-hive/last, kept across reboots).
type LastActivation struct {
	Job  string `json:"job"`
	Goal Goal   `json:"goal"`
	Path string `json:"path"`
	// Status is ok, failed, rolled-back, rollback-failed, or activated:
	// the activation succeeded and its post-activation checks have not
	// finished (nix-hive stopped during them, say).
	Status string `json:"status"`
	// Specialisation is the specialisation of Path it activated, if any.
	Specialisation string `json:"specialisation,omitempty"`
}

func parseState(out string) State {
	var hs State
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "active":
			hs.Active = v
		case "link": // system-42-link
			if rest, ok := strings.CutPrefix(v, "system-"); ok {
				hs.Generation, _ = strconv.Atoi(strings.TrimSuffix(rest, "-link"))
			}
		case "profile":
			hs.Profile = v
		case "last":
			if f := strings.Fields(v); len(f) == 4 || len(f) == 5 {
				hs.Last = &LastActivation{Job: f[0], Goal: Goal(f[1]), Path: f[2], Status: f[3]}
				if len(f) == 5 {
					hs.Last.Specialisation = f[4]
				}
			}
		case "profiles":
			hs.Profiles = v
		case "running":
			hs.Running = v
		case "boot":
			hs.BootID = v
		case "rebootmark":
			hs.RebootMark = v
		case "gzip":
			hs.Gzip = v == "1"
		case "trusted":
			hs.Trusted, hs.TrustRead = strings.Fields(v), true
		}
	}
	return hs
}

// QueryError is a query that ran but failed on the host.
type QueryError struct {
	code   int
	stderr string
}

func (e *QueryError) Error() string {
	return fmt.Sprintf("query system: exit %d: %s", e.code, lastLines(e.stderr, 2))
}

// Query asks instance n what it runs. A transport failure is returned as
// is; a failing query on the host as *QueryError.
func Query(ctx context.Context, remote Remote, n string) (State, error) {
	return query(ctx, remote.Run, n)
}

// QueryFresh is Query over a new connection, made for it: what the host
// runs, and that a new login works now.
func QueryFresh(ctx context.Context, remote Remote, n string) (State, error) {
	return query(ctx, remote.RunFresh, n)
}

func query(ctx context.Context, run runFunc, n string) (State, error) {
	var out, stderr bytes.Buffer
	code, err := run(ctx, n, asLogin(queryProgram), nil, &out, &stderr)
	if err != nil {
		return State{}, err
	}
	if code != 0 {
		return State{}, &QueryError{code: code, stderr: stderr.String()}
	}
	return parseState(out.String()), nil
}

// Files reads a host's links and small files without starting a
// process there: over an sftp session held open, the pool's or a
// connection holder's.
type Files = transport.FileReader

// stateReads are the reads of ReadState's first batch: what
// queryProgram prints, under the same keys.
var stateReads = []struct{ key, op, path string }{
	{"active", "readlink", "/run/current-system"},
	{"link", "readlink", profile},
	{"profile", "resolve", profile},
	{"last", "firstline", "/nix/var/nix-hive/last"},
	{"profiles", "firstline", "/nix/var/nix-hive/profiles"},
	{"boot", "firstline", "/proc/sys/kernel/random/boot_id"},
	{"rebootmark", "firstline", "/run/nix-hive/reboot"},
}

// ReadState reads what queryProgram prints, file by file, in one batch
// of reads (two while a job's lock exists), and parses it the same way.
// exact is false when the state files leave open whether an activation
// runs, which only the activation lock can tell: the lock exists and the
// job /run/nix-hive/current names has not written a final state (a job
// writes "done ..." last, still holding the lock). With owner it also
// says whether a deploy owner file exists, that is whether a deploy may
// hold the host.
func ReadState(f Files, owner bool) (hs State, exact, held bool, err error) {
	qs := make([]transport.FileQuery, 0, len(stateReads)+3)
	for _, r := range stateReads {
		qs = append(qs, transport.FileQuery{Op: r.op, Path: r.path})
	}
	qs = append(qs, transport.FileQuery{Op: "exists", Path: "/run/nix-hive/activation.lock"},
		transport.FileQuery{Op: "firstline", Path: "/run/nix-hive/current"})
	if owner {
		qs = append(qs, transport.FileQuery{Op: "exists", Path: deployOwner})
	}
	a, err := f.Batch(qs)
	if err != nil {
		return State{}, false, false, err
	}
	var b strings.Builder
	for i, r := range stateReads {
		if v := a[i].S; v != "" {
			fmt.Fprintf(&b, "%s=%s\n", r.key, v)
		}
	}
	n := len(stateReads)
	held = owner && a[n+2].B
	if locked, id := a[n].B, a[n+1].S; locked {
		if id == "" || strings.ContainsAny(id, "/") || id == "." || id == ".." {
			return State{}, false, held, nil
		}
		st, err := f.Batch([]transport.FileQuery{{Op: "firstline", Path: "/run/nix-hive/jobs/" + id + "/state"}})
		if err != nil {
			return State{}, false, false, err
		}
		if !strings.HasPrefix(st[0].S, "done") {
			return State{}, false, held, nil
		}
	}
	return parseState(b.String()), true, held, nil
}
