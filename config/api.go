package config

import (
	"path/filepath"
	"strings"
)

// API is the remote management API and web console (package api).
type API struct {
	// Listen is the "IP:port" the API and console listen on. Default
	// unset: no API. Unless it is a loopback address, CertFile and
	// KeyFile are required (TLS).
	Listen string `toml:"listen"`
	// TokensFile holds the API tokens, one "NAME ROLE TOKEN" a line, ROLE
	// read or admin; a file readable by group or others is refused.
	// Required with Listen.
	TokensFile string `toml:"tokens_file"`
	// CertFile and KeyFile are the server's TLS certificate and key (PEM).
	// Default unset: plain HTTP, allowed on loopback only. TLS 1.2 at
	// least.
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
	// ClientCAFile, if set, makes clients present a certificate signed by
	// one of its CAs (in addition to a token). Needs CertFile.
	ClientCAFile string `toml:"client_ca_file"`
	// AuditFile, if set, is an absolute path the audit records (every
	// modification: token, action, filter, count) are appended to as JSON
	// lines; default unset: they go to the daemon's log.
	AuditFile string `toml:"audit_file"`
}

func (a API) validate(v *validator) {
	if a.Listen == "" {
		for _, k := range []struct{ key, val string }{{"api.tokens_file", a.TokensFile}, {"api.cert_file", a.CertFile},
			{"api.key_file", a.KeyFile}, {"api.client_ca_file", a.ClientCAFile}, {"api.audit_file", a.AuditFile}} {
			if k.val != "" {
				v.add(k.key, "set while api.listen is not: the API is off; set listen (e.g. \"127.0.0.1:9470\") or remove this")
			}
		}
		return
	}
	ap, err := parseAddrPort(a.Listen)
	if err != nil {
		v.add("api.listen", "%v", err)
		return
	}
	switch {
	case a.CertFile != "" && a.KeyFile == "":
		v.add("api.cert_file", "set without key_file: set both or neither")
	case a.CertFile == "" && a.KeyFile != "":
		v.add("api.key_file", "set without cert_file: set both or neither")
	}
	if a.CertFile == "" && a.KeyFile == "" && !ap.Addr().IsLoopback() {
		v.add("api.listen", "%q is not a loopback address: TLS is required there; set cert_file and key_file", a.Listen)
	}
	if a.ClientCAFile != "" && a.CertFile == "" {
		v.add("api.client_ca_file", "client certificates need TLS: set cert_file and key_file")
	}
	if strings.TrimSpace(a.TokensFile) == "" {
		v.add("api.tokens_file", "required with api.listen: the file of \"NAME ROLE TOKEN\" lines, e.g. \"/etc/ctsyncd/api.tokens\"")
	}
	if f := a.AuditFile; f != "" && (!filepath.IsAbs(f) || strings.HasSuffix(f, "/")) {
		v.add("api.audit_file", "%q is not an absolute file path", f)
	}
}
