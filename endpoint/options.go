package endpoint

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/nix-hive/nix-hive/internal/spelling"
)

// Options is the allowlist of OpenSSH options a hive may set, in their
// canonical spelling: options that only shape the connection to the
// instance (how to authenticate, which algorithms, timeouts, keepalives,
// the network below it). Every other option is refused by name, because
// a hive is shared and may be generated: an option that runs a program,
// sends something from this machine, shares or forwards connections, or
// decides which host keys are trusted belongs in the user's own
// ~/.ssh/config, which nix-hive honours.
var Options = []string{
	// authentication, with the user's own keys
	"CertificateFile", "GSSAPIAuthentication", "IdentitiesOnly", "IdentityFile",
	"KbdInteractiveAuthentication", "NumberOfPasswordPrompts", "PasswordAuthentication",
	"PreferredAuthentications", "PubkeyAcceptedAlgorithms", "PubkeyAcceptedKeyTypes",
	"PubkeyAuthentication",
	// algorithms
	"CASignatureAlgorithms", "Ciphers", "HostKeyAlgorithms", "KexAlgorithms", "MACs",
	"RekeyLimit", "RequiredRSASize",
	// timeouts and keepalives
	"ConnectTimeout", "ConnectionAttempts", "ServerAliveCountMax", "ServerAliveInterval",
	"TCPKeepAlive",
	// the network below the connection
	"AddressFamily", "BindAddress", "BindInterface", "Compression", "IPQoS",
	// how ssh behaves, not what it reaches
	"BatchMode", "CheckHostIP", "FingerprintHash", "LogLevel",
}

// derived are set from the instance's own attributes; OpenSSH uses the
// first value it reads, so a second one would silently disagree with
// nix-hive's own client.
var derived = map[string]string{
	"hostname":              "host",
	"user":                  "user",
	"port":                  "port",
	"proxyjump":             "jump",
	"hostkeyalias":          "hostKey",
	"userknownhostsfile":    "hostKey",
	"stricthostkeychecking": "hostKey (or --accept-new-host-keys)",
}

// refused says, for options an operator may well try, why a hive may not
// set them (by lower-case name: the canonical name and the reason); other
// options outside the allowlist get a general reason.
var refused = map[string][2]string{}

func init() {
	for _, o := range Options {
		allowed[strings.ToLower(o)] = true
	}
	for why, opts := range map[string][]string{
		"it can make ssh run a command on this machine": {"ProxyCommand", "Include", "LocalCommand", "PermitLocalCommand",
			"KnownHostsCommand", "Match", "Host", "PKCS11Provider", "SecurityKeyProvider", "XAuthLocation", "EnableSSHKeysign",
			"ProxyUseFdpass", "RemoteCommand"},
		"it sends something from this machine to the host": {"SendEnv", "SetEnv", "ForwardAgent", "ForwardX11",
			"ForwardX11Trusted", "GSSAPIDelegateCredentials", "IdentityAgent", "AddKeysToAgent", "LocalForward",
			"RemoteForward", "DynamicForward", "Tunnel", "TunnelDevice", "PermitRemoteOpen", "GatewayPorts"},
		"it decides which host keys are trusted": {"GlobalKnownHostsFile", "UpdateHostKeys", "VerifyHostKeyDNS",
			"NoHostAuthenticationForLocalhost", "HashKnownHosts", "RevokedHostKeys", "HostbasedAuthentication",
			"CanonicalizeHostname", "CanonicalDomains", "CanonicalizeFallbackLocal", "CanonicalizeMaxDots",
			"CanonicalizePermittedCNAMEs"},
		"it shares connections between programs": {"ControlMaster", "ControlPath", "ControlPersist"},
	} {
		for _, o := range opts {
			refused[strings.ToLower(o)] = [2]string{o, why}
		}
	}
}

var (
	allowed     = map[string]bool{}
	allowedList = strings.Join(slices.Sorted(slices.Values(Options)), ", ")
	optionRE    = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]*$`)
)

// CheckOption checks one of a hive's ssh options (OpenSSH compares names
// without case, and so does this).
func CheckOption(key, value string) error {
	if !optionRE.MatchString(key) {
		return fmt.Errorf("ssh option %q is not an OpenSSH option name", key)
	}
	k := strings.ToLower(key)
	if attr, ok := derived[k]; ok {
		return fmt.Errorf("ssh option %s is derived from the instance; set %s instead", key, attr)
	}
	if !allowed[k] {
		if r, ok := refused[k]; ok {
			return fmt.Errorf("ssh option %s is refused: %s, and a hive must not choose that (hives are shared, and may be generated); put it in your ~/.ssh/config, which nix-hive honours", r[0], r[1])
		}
		hint := ""
		if c := spelling.Closest(key, Options); c != "" {
			hint = "; did you mean " + c + "?"
		}
		return fmt.Errorf("ssh option %s is refused: a hive may set only options that shape the connection (%s)%s", key, allowedList, hint)
	}
	if strings.ContainsFunc(value, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("ssh option %s has a control character in its value", key)
	}
	return nil
}
