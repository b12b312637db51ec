package imagetest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Parts is an image as raw parts, for tests that need what no honest
// builder makes: blobs filed under digests they do not hash to, a config
// paired with layers it does not describe.
type Parts struct {
	Config []byte
	Layers [][]byte // blobs as stored: gzip, zstd or plain tar
	// ConfigDigest and LayerDigests are what the manifest claims; "" (or a
	// short list) means the true digest.
	ConfigDigest string
	LayerDigests []string
}

// Digest is the sha256 digest of b.
func Digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func (p Parts) configDigest() string {
	if p.ConfigDigest != "" {
		return p.ConfigDigest
	}
	return Digest(p.Config)
}

func (p Parts) layerDigest(i int) string {
	if i < len(p.LayerDigests) && p.LayerDigests[i] != "" {
		return p.LayerDigests[i]
	}
	return Digest(p.Layers[i])
}

// Manifest is the OCI image manifest of p, with its claims.
func (p Parts) Manifest() []byte {
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int    `json:"size"`
	}
	m := struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Config        desc   `json:"config"`
		Layers        []desc `json:"layers"`
	}{2, "application/vnd.oci.image.manifest.v1+json",
		desc{"application/vnd.oci.image.config.v1+json", p.configDigest(), len(p.Config)}, []desc{}}
	for i, l := range p.Layers {
		mt := "application/vnd.oci.image.layer.v1.tar"
		switch {
		case bytes.HasPrefix(l, []byte{0x1f, 0x8b}):
			mt += "+gzip"
		case bytes.HasPrefix(l, []byte{0x28, 0xb5, 0x2f, 0xfd}):
			mt += "+zstd"
		}
		m.Layers = append(m.Layers, desc{mt, p.layerDigest(i), len(l)})
	}
	b, _ := json.Marshal(m)
	return b
}

// Blobs are p's blobs by the digests the manifest claims.
func (p Parts) Blobs() map[string][]byte {
	out := map[string][]byte{p.configDigest(): p.Config}
	for i, l := range p.Layers {
		out[p.layerDigest(i)] = l
	}
	return out
}

// WriteLayout writes p as an OCI layout directory whose one image is tagged
// tag; blobs are filed under the digests the manifest claims.
func (p Parts) WriteLayout(t testing.TB, dir, tag string) {
	t.Helper()
	man := p.Manifest()
	files := map[string][]byte{"oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`)}
	for d, b := range p.Blobs() {
		files["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")] = b
	}
	files["blobs/sha256/"+strings.TrimPrefix(Digest(man), "sha256:")] = man
	files["index.json"] = []byte(fmt.Sprintf(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d,"annotations":{"org.opencontainers.image.ref.name":%q}}]}`,
		Digest(man), len(man), tag))
	for name, b := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// DockerArchive is p as a docker save archive tagged tag. A docker archive
// names blobs by path, so there are no digests to claim; raw, when set, is
// appended as the archive's last entries (hand-made headers) in place of
// its end-of-archive marker.
func (p Parts) DockerArchive(t testing.TB, tag string, raw []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	var layers []string
	files := []struct {
		name string
		body []byte
	}{{"config.json", p.Config}}
	for i, l := range p.Layers {
		n := p.LayerFile(i)
		layers = append(layers, n)
		files = append(files, struct {
			name string
			body []byte
		}{n, l})
	}
	man, _ := json.Marshal([]map[string]any{{"Config": "config.json", "RepoTags": []string{tag}, "Layers": layers}})
	files = append(files, struct {
		name string
		body []byte
	}{"manifest.json", man})
	for _, f := range files {
		if raw != nil && bytes.Contains(raw, []byte(f.name)) {
			continue // raw stands in for this one
		}
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.body); err != nil {
			t.Fatal(err)
		}
	}
	if raw != nil {
		if err := tw.Flush(); err != nil {
			t.Fatal(err)
		}
		return append(buf.Bytes(), raw...)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// LayerFile is the name of layer i in DockerArchive: its digest, as
// go-containerregistry names layers.
func (p Parts) LayerFile(i int) string {
	return strings.TrimPrefix(Digest(p.Layers[i]), "sha256:") + ".tar"
}

// Serve runs a registry on 127.0.0.1 that serves p, as it claims, at
// repo:tag, and returns its host:port. Unlike Registry, it files blobs
// under whatever digest p claims.
func (p Parts) Serve(t testing.TB, repo, tag string) string {
	t.Helper()
	srv := httptest.NewServer(p.Handler(repo, tag))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// Handler is the registry Serve runs, for a listener of the caller's own
// (one in a test's network namespace).
func (p Parts) Handler(repo, tag string) http.Handler {
	man := p.Manifest()
	blobs := p.Blobs()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Path
		switch {
		case path == "/v2/" || path == "/v2":
			w.WriteHeader(http.StatusOK)
		case path == "/v2/"+repo+"/manifests/"+tag || path == "/v2/"+repo+"/manifests/"+Digest(man):
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Docker-Content-Digest", Digest(man))
			w.Header().Set("Content-Length", fmt.Sprint(len(man)))
			if r.Method != http.MethodHead {
				_, _ = w.Write(man)
			}
		case strings.HasPrefix(path, "/v2/"+repo+"/blobs/"):
			b, ok := blobs[strings.TrimPrefix(path, "/v2/"+repo+"/blobs/")]
			if !ok {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			if r.Method != http.MethodHead {
				_, _ = w.Write(b)
			}
		default:
			http.NotFound(w, r)
		}
	})
}

// ConfigFor is an OCI config (linux/amd64) whose rootfs.diff_ids name the
// given uncompressed layer tars, with an environment to tell images apart.
func ConfigFor(env string, layers ...[]byte) []byte {
	var ids []string
	for _, l := range layers {
		ids = append(ids, Digest(l))
	}
	b, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Env": []string{env}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": ids},
	})
	return b
}
