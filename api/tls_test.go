package api

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

type testCert struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

// makeCert makes a certificate signed by parent (self-signed when nil).
func makeCert(t *testing.T, name string, ca bool, parent *testCert, usage x509.ExtKeyUsage) *testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		KeyUsage: x509.KeyUsageDigitalSignature, IsCA: ca, BasicConstraintsValid: true,
	}
	if ca {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	signer, signKey := tmpl, key
	if parent != nil {
		signer, signKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCert{cert: c, key: key, der: der}
}

func (c *testCert) write(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	kb, _ := x509.MarshalECPrivateKey(c.key)
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}

// TestTLSConfigClientCertificates: with client_ca_file, a client without a
// certificate, or with one from another CA, is refused at the handshake;
// one signed by the CA is served. TLS 1.1 is refused.
func TestTLSConfigClientCertificates(t *testing.T) {
	dir := t.TempDir()
	ca := makeCert(t, "ca", true, nil, x509.ExtKeyUsageAny)
	other := makeCert(t, "other ca", true, nil, x509.ExtKeyUsageAny)
	server := makeCert(t, "server", false, ca, x509.ExtKeyUsageServerAuth)
	good := makeCert(t, "client", false, ca, x509.ExtKeyUsageClientAuth)
	bad := makeCert(t, "intruder", false, other, x509.ExtKeyUsageClientAuth)
	certFile, keyFile := server.write(t, dir, "server")
	caFile, _ := ca.write(t, dir, "ca")

	cfg, err := TLSConfig(certFile, keyFile, caFile)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	srv.TLS = cfg
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	srv.StartTLS()
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	get := func(client *testCert, maxVersion uint16) error {
		tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS10, MaxVersion: maxVersion}
		if client != nil {
			tc.Certificates = []tls.Certificate{{Certificate: [][]byte{client.der}, PrivateKey: client.key}}
		}
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
		resp, err := c.Get(srv.URL)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	if err := get(good, 0); err != nil {
		t.Errorf("client with a certificate from the CA: %v", err)
	}
	if err := get(nil, 0); err == nil {
		t.Error("client without a certificate was served")
	}
	if err := get(bad, 0); err == nil {
		t.Error("client with a certificate from another CA was served")
	}
	if err := get(good, tls.VersionTLS11); err == nil {
		t.Error("TLS 1.1 was served")
	}

	if _, err := TLSConfig(certFile, keyFile, certFile+".missing"); err == nil {
		t.Error("missing client_ca_file accepted")
	}
	if _, err := TLSConfig(certFile, certFile, ""); err == nil {
		t.Error("a certificate as key accepted")
	}
	if !IsLoopback("127.0.0.1:9470") || !IsLoopback("[::1]:9470") || IsLoopback("10.0.0.1:9470") || IsLoopback("localhost:1") {
		t.Error("IsLoopback")
	}
}
