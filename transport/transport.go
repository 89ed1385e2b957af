package transport

import (
	"errors"
	"time"
)

// Sentinel errors; test with errors.Is. The wrapping error always names the
// instance. A refused host key is a *hostkey.Error instead, which
// matches hostkey.ErrMismatch (refused even with AcceptNewHostKeys) or
// hostkey.ErrUnknown (refused unless AcceptNewHostKeys is set).
var (
	// ErrUnknownInstance means a name is not an endpoint of the pool.
	ErrUnknownInstance = errors.New("unknown instance")
	// ErrClosed means the pool was closed.
	ErrClosed = errors.New("transport pool closed")
)

// DefaultConnectTimeout is how long connecting to one host (TCP and the
// SSH handshake, per hop) may take unless told otherwise: the pool's,
// the --connect-timeout flag's and the deploy's default.
const DefaultConnectTimeout = 10 * time.Second

// Endpoint is how to reach one instance.
type Endpoint struct {
	// Name is the instance name. It is the HostKeyAlias in the generated
	// OpenSSH config, so pinned keys are recorded under it.
	Name string
	// Host is an address or DNS name; "" means the user's ssh config
	// HostName for Name, else Name itself.
	Host string
	// Fallbacks are more addresses of the instance, tried in order when
	// Host does not answer (a hive's `host = [ "10.0.0.5" "vpn-web-1" ]`).
	Fallbacks []string `json:",omitempty"`
	// Port is the TCP port; 0 means the user's ssh config Port, else 22.
	Port int
	// User is the login; "" means the user's ssh config User, else root.
	User string
	// HostKeys are pinned keys in authorized_keys form
	// ("ssh-ed25519 AAAA... [comment]"). When any is set, the host must
	// present one of them and known_hosts files are not consulted.
	HostKeys []string
	// Jump names another endpoint to tunnel through ("" = direct). Chains
	// are allowed; cycles are an error.
	Jump string
	// Options are extra OpenSSH options from the hive. All of them go into
	// the generated OpenSSH config; the Go client itself honours
	// IdentityFile (one path, or several separated by commas) and
	// IdentitiesOnly (and CertificateFile). NewPool accepts only the
	// options of endpoint.Options, those that shape the connection; a
	// ProxyCommand, SendEnv or ControlPath comes from the user's own ssh
	// config only.
	Options map[string]string
}

// Config is the set of endpoints and the client-side policy of a Pool.
// A connection holder (package mux) is made of the fields not tagged
// json:"-"; the others are each command's own.
type Config struct {
	// Endpoints by instance name; an Endpoint's empty Name is filled from
	// its key.
	Endpoints map[string]Endpoint
	// KnownHostsFiles are consulted for hosts without pinned keys; files
	// that do not exist are skipped. nil means ~/.ssh/known_hosts.
	KnownHostsFiles []string
	// HostCAs are certificate authority keys (authorized_keys form): a
	// host certificate they signed, naming the host's HostName among its
	// principals, is accepted for any endpoint without pinned keys, as an
	// "@cert-authority" line in known_hosts would be (those are honoured
	// too).
	HostCAs []string
	// AcceptNewHostKeys records the key of a host that has neither a pinned
	// nor a known key in AcceptedKnownHosts and accepts it. A mismatch is
	// still refused.
	AcceptNewHostKeys bool
	// AcceptedKnownHosts is the file accepted keys are appended to, under
	// the instance's Alias (the HostKeyAlias of the generated OpenSSH
	// config), so a key belongs to the instance rather than to an address
	// another hive may reuse. It is always consulted like KnownHostsFiles,
	// and is the first known_hosts file of the generated config, where
	// OpenSSH's accept-new writes too. nix-hive uses the hive's
	// .nix-hive/known_hosts; "" means ~/.ssh/known_hosts.
	AcceptedKnownHosts string
	// ConnectTimeout bounds TCP connect plus SSH handshake of one hop;
	// 0 means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// KeepAlive is the interval of keepalive@openssh.com probes on every
	// pooled connection whose host said nothing since the last one (as
	// OpenSSH's ServerAliveInterval); 0 means 15s, negative disables them.
	KeepAlive time.Duration
	// KeepAliveTimeout is how long a probe may go unanswered before the
	// connection is closed and evicted; 0 means 3*KeepAlive (OpenSSH's
	// ServerAliveCountMax default).
	KeepAliveTimeout time.Duration
	// IdleKeepAlive, if longer than KeepAlive, is the interval of probes
	// on a connection no channel opened through the pool is using (see
	// OpenChannel): a holder's connections waiting between commands then
	// cost the uplink little, while one a command uses is still probed
	// every KeepAlive it is silent.
	IdleKeepAlive time.Duration `json:"-"`
	// UserConfig is the user's OpenSSH config, read for defaults the hive
	// does not set (User, Port, HostName, IdentityFile) and included by the
	// generated config. "" means ~/.ssh/config; "none" ignores it.
	UserConfig string
	// BatchMode makes the generated OpenSSH config never prompt (for a
	// password or passphrase): for configs handed to tools that run ssh
	// without a terminal of their own, like nix copy.
	BatchMode bool `json:"-"`
	// Passphrase, if set, is asked for the passphrase of an encrypted
	// identity file that no agent holds (once per file and run; calls are
	// serialised). nix-hive asks on the terminal; nil skips such keys.
	Passphrase func(keyFile string) ([]byte, error) `json:"-"`
	// RawCommands sends Run's command lines exactly as given. By default a
	// short probe of shell builtins (read and echo, no process) runs first
	// and reports the command's process group on stderr, where Run removes
	// it again, so that a cancelled command can be stopped even on root
	// logins, for which OpenSSH ignores signal requests. Set it for
	// restricted accounts whose forced command checks the command line.
	RawCommands bool `json:"-"`
	// Holder is a connection holder (package mux) to go through instead
	// of connecting to hosts; the pool closes it on Close (NewPool's
	// caller, should NewPool fail). nil connects directly.
	Holder Holder `json:"-"`
	// StartHolder, when Holder is nil, starts a holder and returns it,
	// called the first time the pool would connect to a host (never for
	// a command that connects to none). nil (it says why) connects
	// directly.
	StartHolder func() Holder `json:"-"`
	// Hive names the hive the endpoints come from (its directory): a
	// holder belongs to it (package mux), whatever its endpoints are now.
	Hive string
}
