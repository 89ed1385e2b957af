package mux

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/nix-hive/nix-hive/transport"
)

// The holder's channel types and global requests.
const (
	muxOpen    = "open@nix-hive"    // relay a channel: openMsg
	muxConnect = "connect@nix-hive" // dial an instance (if not yet), then close
	muxFiles   = "files@nix-hive"   // FileReader requests: JSON lines
	muxReset   = "reset@nix-hive"   // drop an instance's connection
	muxInfo    = "info@nix-hive"    // Info as JSON
	muxStop    = "stop@nix-hive"    // end the holder
	muxRetire  = "retire@nix-hive"  // let go of the socket; end when unused
)

// protocol changes whenever the protocol does: it is part of the
// holder's config, so a newer nix-hive never talks to an older holder.
const protocol = "nix-hive-mux-2"

type openMsg struct {
	Instance string
	// Fresh asks for a connection made for this channel alone and closed
	// with it (RunFresh), not the held one.
	Fresh bool
	Type  string
	Data  []byte
}

// Info is what a holder reports about itself.
type Info struct {
	Pid     int       `json:"pid"`
	Started time.Time `json:"started"`
	Idle    string    `json:"idle_timeout"`
	// Connected is how many instances it holds a connection to now.
	Connected int `json:"connected"`
	// Handshakes is how many SSH connections it has made since it
	// started: a command that found every host connected adds none.
	Handshakes int `json:"handshakes"`
	Sessions   int `json:"sessions"`
	// Reads is how many times a command began reading a host's files
	// (its state, for status or a deploy): a command counts each host
	// once.
	Reads int `json:"reads"`
	// SFTPRequests is how many sftp requests it has sent on its sftp
	// sessions (transport.Stats.SFTPRequests): the reads commands asked
	// it for. A holder from before it was counted reports 0.
	SFTPRequests int `json:"sftp_requests,omitempty"`
	// Socket is where it listens; its log is beside it (.log).
	Socket string `json:"socket"`
}

// holderConfig is what a holder is made of, and what names its socket:
// a transport.Config's persisted fields (those not tagged json:"-": the
// endpoints and the client policy, not what is each command's own), with
// the protocol and the content of the user's ssh config.
type holderConfig struct {
	Protocol string
	transport.Config
	// UserConfigSum is the user's ssh config's content hash: a changed
	// IdentityFile or HostName there changes the holder too.
	UserConfigSum string
	// Hive is Config.Hive, which it hides: encoded after UserConfigSum,
	// where the sums in running holders' records have it.
	Hive string
}

func configOf(cfg transport.Config) holderConfig {
	cfg = transport.WithDefaults(cfg)
	var sum string
	if b, err := os.ReadFile(transport.UserConfigFile(cfg)); err == nil {
		s := sha256.Sum256(b)
		sum = hex.EncodeToString(s[:])
	}
	return holderConfig{Protocol: protocol, Config: cfg, UserConfigSum: sum, Hive: cfg.Hive}
}

// sum names the version of the hive h serves: everything but the
// timeouts, which are each command's own.
func (h holderConfig) sum() string {
	h.ConnectTimeout, h.KeepAlive, h.KeepAliveTimeout = 0, 0, 0
	b, _ := json.Marshal(h)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:12])
}

// config is the Config a holder serves: h's, in batch mode (a holder
// has no one to ask for a password).
func (h holderConfig) config() transport.Config {
	cfg := h.Config
	cfg.Hive, cfg.BatchMode = h.Hive, true
	return cfg
}

// encodeConfig is cfg as a holder started in another process reads it
// (decodeConfig); it holds no secret, only endpoints and policy.
func encodeConfig(cfg transport.Config) ([]byte, error) { return json.Marshal(configOf(cfg)) }

// decodeConfig reads encodeConfig's output.
func decodeConfig(b []byte) (transport.Config, error) {
	var h holderConfig
	if err := json.Unmarshal(b, &h); err != nil {
		return transport.Config{}, fmt.Errorf("mux config: %w", err)
	}
	if h.Protocol != protocol {
		return transport.Config{}, fmt.Errorf("mux config: protocol %q, want %q", h.Protocol, protocol)
	}
	return h.config(), nil
}

// Dir is the directory of this user's holder sockets:
// $XDG_RUNTIME_DIR/nix-hive, else nix-hive-UID in the temporary directory.
// With create it is made (mode 0700) if missing. One that exists must be
// a directory of this user's that no one else can enter, or it is
// refused: whoever could write there could pose as the holder.
func Dir(create bool) (string, error) {
	dir := filepath.Join(os.TempDir(), "nix-hive-"+strconv.Itoa(os.Getuid()))
	if rt := os.Getenv("XDG_RUNTIME_DIR"); rt != "" {
		dir = filepath.Join(rt, "nix-hive")
	}
	if create {
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("mux socket directory: %w", err)
		}
	}
	fi, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) && !create {
		return dir, nil
	}
	if err != nil {
		return "", fmt.Errorf("mux socket directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return "", fmt.Errorf("mux socket directory %s: not a directory; remove it", dir)
	case !ok || int(st.Uid) != os.Getuid():
		return "", fmt.Errorf("mux socket directory %s: owned by another user; remove it", dir)
	case fi.Mode().Perm()&0o077 != 0:
		return "", fmt.Errorf("mux socket directory %s: mode %s lets others in; chmod 700 it", dir, fi.Mode().Perm())
	}
	return dir, nil
}

// Socket is the socket of cfg's hive's holder, in Dir (which it does not
// create): a hash of Config.Hive, or, for a Config that names no hive, of
// its endpoints and policy.
func Socket(cfg transport.Config) (string, error) {
	dir, err := Dir(false)
	if err != nil {
		return "", err
	}
	name := configOf(cfg).sum()
	if cfg.Hive != "" {
		s := sha256.Sum256([]byte("hive " + cfg.Hive))
		name = hex.EncodeToString(s[:12])
	}
	return filepath.Join(dir, name+".sock"), nil
}

// Running is the socket of cfg's holder if one answers there and serves
// the hive as cfg has it, else "": what a command goes through unless
// told not to. A holder of an earlier version of the hive is retired on
// the way (it ends when the commands using it do), so that the next
// holder takes its socket. A socket directory others could use is an
// error.
func Running(cfg transport.Config) (string, error) {
	sock, err := Socket(cfg)
	if err != nil || !Answers(sock) {
		return "", err
	}
	cur, ok := currentHolder(sock)
	if ok && cur.ConfigSum == configOf(cfg).sum() {
		return sock, nil
	}
	retire(sock)
	return "", nil
}

// Answers says whether a process listens at the socket path: a socket
// whose holder died (killed, or its machine's /tmp kept) does not.
func Answers(path string) bool {
	c, err := net.Dial("unix", path)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// peerUID is the user id of the process at the other end of a Unix
// socket connection.
func peerUID(c net.Conn) (int, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return -1, errors.New("not a Unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if cerr != nil {
		return -1, cerr
	}
	return int(cred.Uid), nil
}
