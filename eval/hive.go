package eval

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nix-hive/nix-hive/nixcmd"
	"github.com/nix-hive/nix-hive/state"
)

// Hive is a located and evaluated hive: where it is, its inventory, and
// the Evaluator that builds its systems.
type Hive struct {
	Src       Source
	Inventory *Inventory
	Evaluator *Evaluator
}

// Open evaluates the inventory of the hive at src. A hive with validation
// errors is an *InvalidHiveError naming the file. warn (nil: dropped) is
// told what the hive's evaluation warns of; the command line decides how
// a warning looks.
func Open(ctx context.Context, src Source, nix *nixcmd.Runner, warn func(string)) (*Hive, error) {
	ev := &Evaluator{Src: src, Nix: nix, Warn: warn}
	inv, err := ev.Inventory(ctx)
	if err != nil {
		return nil, err
	}
	return &Hive{Src: src, Inventory: inv, Evaluator: ev}, nil
}

// StatePath is where hive.state lives unless --state says otherwise:
// beside the hive.
func (s Source) StatePath() string { return filepath.Join(s.Dir, "hive.state") }

// KeyFile is signing.keyFile resolved against the hive's directory, ""
// when the hive does not sign; a configured key that is missing is an
// error naming the file and how to make one.
func (h *Hive) KeyFile() (string, error) {
	kf := h.keyFilePath()
	if kf == "" {
		return "", nil
	}
	if _, err := os.Stat(kf); err != nil {
		return "", fmt.Errorf("%s: signing.keyFile: %w (create it with `nix-hive keygen`)", h.Src.File, err)
	}
	return kf, nil
}

// keyFilePath is where the hive says its secret key is, "" for nowhere.
func (h *Hive) keyFilePath() string {
	kf := h.Inventory.Signing.KeyFile
	if kf != "" && !filepath.IsAbs(kf) {
		kf = filepath.Join(h.Src.Dir, kf)
	}
	return kf
}

// NewKeyFile is where keygen puts the hive's secret key: signing.keyFile
// when the hive names one (h may be nil: keygen must work before the hive
// evaluates), else keys/hive.sec beside the hive.
func NewKeyFile(src Source, h *Hive) string {
	if h != nil {
		if kf := h.keyFilePath(); kf != "" {
			return kf
		}
	}
	return filepath.Join(src.Dir, "keys", "hive.sec")
}

// GenerateKey makes a signing key pair named name: the secret at secret
// (mode 0600, in a directory made 0700 if missing), the public key beside
// it (PublicKeyPath), whose line it returns. It never overwrites a key.
func GenerateKey(ctx context.Context, nix *nixcmd.Runner, secret, name string) (string, error) {
	pub := PublicKeyPath(secret)
	for _, p := range []string{secret, pub} {
		if _, err := os.Stat(p); err == nil {
			return "", fmt.Errorf("%s already exists; not overwriting a signing key", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
	}
	if err := os.MkdirAll(filepath.Dir(secret), 0o700); err != nil {
		return "", err
	}
	if _, err := nix.Run(ctx, "nix-store", "--generate-binary-cache-key", name, secret, pub); err != nil {
		return "", err
	}
	if err := os.Chmod(secret, 0o600); err != nil {
		return "", err
	}
	key, err := os.ReadFile(pub)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(key)), nil
}

// PublicKeyPath is where the public half of a secret key file lives.
func PublicKeyPath(secret string) string {
	return strings.TrimSuffix(secret, ".sec") + ".pub"
}

// PublicKey is the hive's public signing key: signing.publicKey, else the
// .pub file beside signing.keyFile; "" when the hive does not sign.
func (h *Hive) PublicKey() (string, error) {
	if pk := h.Inventory.Signing.PublicKey; pk != "" {
		return pk, nil
	}
	kf, err := h.KeyFile()
	if err != nil || kf == "" {
		return "", err
	}
	b, err := os.ReadFile(PublicKeyPath(kf))
	if err != nil {
		return "", fmt.Errorf("%s: public signing key: %w (set signing.publicKey in the hive)", h.Src.File, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// PathMode says how Paths finds the systems' output paths.
type PathMode int

const (
	// Build realises the systems (once each), keeps GC roots for them
	// beside hive.state, signs them and records them in hive.state.
	Build PathMode = iota
	// Evaluate only evaluates them: nothing is built or written.
	Evaluate
	// Reuse (--no build) takes the builds hive.state records that are
	// still valid in the local store; the others are left out.
	Reuse
)

// Builds are the output paths of systems, and which of them this run
// realised.
type Builds struct {
	Paths map[string]Built
	Built map[string]bool
}

// Missing lists the systems that have no path.
func (b *Builds) Missing(systems []string) []string {
	var out []string
	for _, s := range systems {
		if _, ok := b.Paths[s]; !ok {
			out = append(out, s)
		}
	}
	return out
}

// Paths finds the output paths of systems as mode says. With Build the
// builds are recorded in st (saved) even when a later step fails.
func (h *Hive) Paths(ctx context.Context, st *state.File, systems []string, mode PathMode) (*Builds, error) {
	res := &Builds{Paths: map[string]Built{}, Built: map[string]bool{}}
	switch mode {
	case Evaluate:
		paths, err := h.Evaluator.OutPaths(ctx, h.Inventory, systems)
		res.Paths = paths
		return res, err
	case Reuse:
		for _, s := range systems {
			prev, ok := st.System(s)
			b := Built{System: s, DrvPath: prev.DrvPath, OutPath: prev.OutPath, Profiles: prev.Profiles, On: prev.On}
			if ok && h.Evaluator.ValidOn(ctx, b.On, b.Roots()...) {
				res.Paths[s] = b
			}
		}
		return res, nil
	}
	return res, h.build(ctx, st, systems, res)
}

func (h *Hive) build(ctx context.Context, st *state.File, systems []string, res *Builds) error {
	keyFile, err := h.KeyFile()
	if err != nil {
		return err
	}
	built, err := h.Evaluator.Build(ctx, h.Inventory, systems)
	now := time.Now().UTC()
	for s, b := range built {
		st.SetSystem(s, state.System{DrvPath: b.DrvPath, OutPath: b.OutPath, Profiles: b.Profiles, On: b.On, BuiltAt: now})
		res.Paths[s], res.Built[s] = b, true
	}
	if len(built) > 0 {
		if serr := st.Save(); serr != nil && err == nil {
			err = serr
		}
	}
	if err != nil {
		return err
	}
	if err := h.Evaluator.AddRoots(ctx, st.AuxPath("gcroots"), built); err != nil {
		return err
	}
	if keyFile == "" {
		return nil
	}
	// Signed where they are: here, or in their build host's store.
	paths := map[string][]string{}
	for _, s := range systems {
		paths[built[s].On] = append(paths[built[s].On], built[s].Roots()...)
	}
	for _, on := range slices.Sorted(maps.Keys(paths)) {
		if err := h.Evaluator.SignOn(ctx, on, keyFile, paths[on]); err != nil {
			return err
		}
	}
	return nil
}
