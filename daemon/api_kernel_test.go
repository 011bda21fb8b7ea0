//go:build kernel

package daemon

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ctsyncd/ctsyncd/config"
	"github.com/ctsyncd/ctsyncd/flow"
	"github.com/ctsyncd/ctsyncd/internal/netnstest"
)

const (
	testAdminToken = "admin-0123456789abcdef0123"
	testReadToken  = "read-0123456789abcdef01234"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their paths and a pool that trusts the certificate.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ctsyncd test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "api.crt"), filepath.Join(dir, "api.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// ctKey is a flow's identity as both conntrack(8) and the API print it.
func ctKey(proto, src, dst string, sport, dport, zone int) string {
	return fmt.Sprintf("%s %s %s %d %d zone=%d", proto, src, dst, sport, dport, zone)
}

// conntrackList runs conntrack -L with args in ns and returns the flows'
// keys, sorted.
func conntrackList(t *testing.T, ns *netnstest.NS, args ...string) []string {
	t.Helper()
	out, err := ns.Cmd(append([]string{"conntrack", "-L"}, args...)...).Output()
	if err != nil {
		t.Fatalf("conntrack -L %v: %v", args, err)
	}
	var keys []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		kv := map[string]string{}
		fields := strings.Fields(line)
		for _, f := range fields {
			k, v, ok := strings.Cut(f, "=")
			if ok {
				if _, seen := kv[k]; !seen { // the original tuple comes first
					kv[k] = v
				}
			}
		}
		n := func(k string) int { x, _ := strconv.Atoi(kv[k]); return x }
		sport, dport := n("sport"), n("dport")
		if fields[0] == "icmp" || fields[0] == "icmpv6" {
			sport, dport = n("id"), n("type")<<8|n("code")
		}
		keys = append(keys, ctKey(fields[0], kv["src"], kv["dst"], sport, dport, n("zone")))
	}
	slices.Sort(keys)
	return keys
}

type apiClient struct {
	t    *testing.T
	base string
	c    *http.Client
}

func (a *apiClient) do(method, path, token, body string) (int, []byte) {
	a.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, a.base+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := a.c.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// flows lists the API's flows for a query as sorted keys.
func (a *apiClient) flows(query string) []string {
	a.t.Helper()
	code, body := a.do("GET", "/api/v1/flows?"+query, testReadToken, "")
	if code != 200 {
		a.t.Fatalf("GET /api/v1/flows?%s: %d %s", query, code, body)
	}
	var keys []string
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		var v flow.View
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			a.t.Fatalf("line %q: %v", sc.Text(), err)
		}
		keys = append(keys, ctKey(v.Proto, v.Src, v.Dst, int(v.Sport), int(v.Dport), int(v.Zone)))
	}
	slices.Sort(keys)
	return keys
}

// TestKernelAPI runs a daemon in a namespace with the API on TLS and checks
// it against conntrack(8): listings for filters equal conntrack -L's, a
// delete removes exactly the filtered flows, a read token gets 403 and
// changes nothing, and every modification is audited.
func TestKernelAPI(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.Need(t, "conntrack")
	ns := netnstest.New(t)
	// A mixed table: TCP/UDP/ICMP, IPv4 and IPv6, marks, zones, states.
	for i := range 24 {
		zone := strconv.Itoa(i % 3)
		mark := strconv.Itoa(i % 4)
		ns.Exec(t, "conntrack", "-I", "-p", "tcp", "-s", fmt.Sprintf("10.0.%d.%d", i%2+1, i+10), "-d", "10.0.9.1",
			"--sport", strconv.Itoa(2000+i), "--dport", []string{"443", "22", "80"}[i%3], "--state", []string{"ESTABLISHED", "TIME_WAIT"}[i%2],
			"-u", "ASSURED", "-t", "300", "-m", mark, "-w", zone)
		ns.Exec(t, "conntrack", "-I", "-p", "udp", "-s", fmt.Sprintf("fd00:1::%x", i+1), "-d", "fd00:2::53",
			"--sport", strconv.Itoa(3000+i), "--dport", "53", "-t", "300", "-m", mark)
		if i%4 == 0 {
			ns.Exec(t, "conntrack", "-I", "-p", "icmp", "-s", "10.0.1.5", "-d", "10.0.9.1",
				"--icmp-type", "8", "--icmp-code", "0", "--icmp-id", strconv.Itoa(100+i), "-t", "300")
		}
	}
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("ops admin "+testAdminToken+"\nviewer read "+testReadToken+"\n"), 0o600)
	auditFile := filepath.Join(dir, "audit.log")
	d := startDaemon(t, ns, func(c *config.Config) {
		c.API = config.API{Listen: "127.0.0.1:0", TokensFile: tokens, CertFile: certFile, KeyFile: keyFile, AuditFile: auditFile}
	})
	base := d.APIURL()
	if !strings.HasPrefix(base, "https://127.0.0.1:") {
		t.Fatalf("API URL %q", base)
	}
	a := &apiClient{t: t, base: base, c: &http.Client{Timeout: 30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}

	// TLS: 1.2 at least, and no plain HTTP.
	old := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}}}
	if _, err := old.Get(base + "/api/v1/status"); err == nil {
		t.Error("a TLS 1.1 client was served")
	}
	if resp, err := http.Get("http" + strings.TrimPrefix(base, "https") + "/api/v1/status"); err == nil {
		if resp.StatusCode == 200 {
			t.Error("plain HTTP served on the TLS port")
		}
		resp.Body.Close()
	}
	if code, _ := a.do("GET", "/api/v1/status", "", ""); code != 401 {
		t.Errorf("status without a token: %d", code)
	}
	if code, body := a.do("GET", "/api/v1/status", testReadToken, ""); code != 200 || !strings.Contains(string(body), `"node": "test"`) {
		t.Errorf("status: %d %s", code, body)
	}

	// Listings equal conntrack -L for a table of filters.
	all := conntrackList(t, ns)
	if len(all) != 24+24+6 {
		t.Fatalf("conntrack -L shows %d flows, want %d", len(all), 54)
	}
	for _, c := range []struct{ query, args string }{
		{"", ""},
		{"proto=tcp", "-p tcp"},
		{"proto=udp&dport=53", "-p udp --dport 53"},
		{"proto=tcp&dport=443&zone=0", "-p tcp --dport 443 -w 0"},
		{"src=10.0.1.0/24", "-s 10.0.1.0/24"},
		{"dst=fd00:2::53", "-d fd00:2::53"},
		{"mark=3", "-m 3"},
		{"zone=2", "-w 2"},
		{"proto=tcp&state=TIME_WAIT", "-p tcp --state TIME_WAIT"},
		{"family=ipv6", "-f ipv6"},
		{"proto=icmp", "-p icmp"},
	} {
		want := conntrackList(t, ns, strings.Fields(c.args)...)
		got := a.flows(c.query)
		if len(want) == 0 && c.query != "" {
			t.Errorf("%s: conntrack selects nothing: a useless case", c.query)
		}
		if !slices.Equal(got, want) {
			t.Errorf("GET /api/v1/flows?%s: %d flows, conntrack -L %s: %d\n got %v\nwant %v", c.query, len(got), c.args, len(want), got, want)
		}
	}
	if code, body := a.do("GET", "/api/v1/flows?dport=https", testReadToken, ""); code != 400 || !strings.Contains(string(body), `"param": "dport"`) {
		t.Errorf("bad dport: %d %s", code, body)
	}

	// A read token may not delete: 403, and the table is unchanged.
	for _, m := range []string{"DELETE", "PATCH"} {
		if code, _ := a.do(m, "/api/v1/flows?proto=udp", testReadToken, `{"mark":9}`); code != 403 {
			t.Errorf("%s with a read token: %d", m, code)
		}
	}
	if code, _ := a.do("DELETE", "/api/v1/flows", testAdminToken, ""); code != 400 {
		t.Errorf("DELETE without a filter: %d", code)
	}
	if now := conntrackList(t, ns); !slices.Equal(now, all) {
		t.Fatalf("refused requests changed the table: %d flows, was %d", len(now), len(all))
	}

	// Delete removes exactly the filtered flows.
	victims := conntrackList(t, ns, "-p", "tcp", "--dport", "22")
	code, body := a.do("DELETE", "/api/v1/flows?proto=tcp&dport=22", testAdminToken, "")
	if code != 200 || !strings.Contains(string(body), fmt.Sprintf(`"deleted": %d`, len(victims))) {
		t.Fatalf("delete: %d %s (want %d deleted)", code, body, len(victims))
	}
	var rest []string
	for _, k := range all {
		if !slices.Contains(victims, k) {
			rest = append(rest, k)
		}
	}
	if now := conntrackList(t, ns); !slices.Equal(now, rest) {
		t.Errorf("after the delete conntrack -L shows %d flows, want the %d others:\n%v", len(now), len(rest), now)
	}

	// PATCH sets the mark of the selected flows only.
	code, body = a.do("PATCH", "/api/v1/flows?proto=udp&src=fd00:1::1", testAdminToken, `{"mark":4242}`)
	if code != 200 || !strings.Contains(string(body), `"updated": 1`) {
		t.Fatalf("patch: %d %s", code, body)
	}
	if got := conntrackList(t, ns, "-m", "4242"); len(got) != 1 || !strings.Contains(got[0], "fd00:1::1 ") {
		t.Errorf("flows with mark 4242 after the patch: %v", got)
	}

	// Actions: replication is off here, so bulk is unavailable (409); resync runs.
	if code, _ := a.do("POST", "/api/v1/actions/bulk", testAdminToken, ""); code != http.StatusConflict {
		t.Errorf("bulk without sync: %d", code)
	}
	if code, body := a.do("POST", "/api/v1/actions/resync", testAdminToken, ""); code != 200 {
		t.Errorf("resync: %d %s", code, body)
	}

	// The audit file has one JSON record per modification, with the token.
	data, err := os.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 4 {
		t.Fatalf("audit file has %d lines, want 4 (delete, patch, bulk, resync):\n%s", len(lines), data)
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["token"] != "ops" || rec["action"] != "delete flows" || rec["count"] != float64(len(victims)) ||
		!strings.Contains(fmt.Sprint(rec["filter"]), "--orig-port-dst 22") {
		t.Errorf("audit record %v", rec)
	}
	t.Logf("audit:\n%s", data)
}
