package workspace

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/paddock-vm/paddock/state"
)

// ErrOverlayRefused: the native qcow2 writer does not write this overlay
// (qemu-img may).
var ErrOverlayRefused = errors.New("qcow2 overlay refused")

// Overlay is an empty qcow2 (version 3) image over a backing file: every
// read goes to the backing file until the guest writes. WriteOverlay
// writes exactly what `qemu-img create -f qcow2 -b Backing -F
// BackingFormat -o cluster_size=… FILE Size` writes (docs/interop/qcow2.txt
// in QEMU's source), without running a process: a clone or a snapshot
// costs a few small writes.
type Overlay struct {
	// Size is the virtual size in bytes: a multiple of 512.
	Size int64
	// Backing is the backing file's name as the header keeps it (QEMU
	// resolves a relative name against the overlay's directory).
	Backing string
	// BackingFormat is "raw" or "qcow2".
	BackingFormat string
	// ClusterBits is log2 of the cluster size: 16 (64 KiB, qemu-img's
	// default) when 0; 16 to 21, where qemu-img's layout is the one
	// written here (smaller clusters drop the feature table).
	ClusterBits uint32
}

// The layout qemu-img 7.2 writes for an empty overlay: the header in
// cluster 0 (fields, then the backing format, feature name table and end
// extensions, then the backing file name), the refcount table in cluster
// 1, its one refcount block (16-bit refcounts) in cluster 2, the L1 table
// (all zero: nothing allocated) from cluster 3 on.
const (
	qcowMagic         = 0x514649fb // "QFI\xfb"
	qcowHeaderLength  = 112        // v3 fields with the compression type byte, padded to 8
	extBackingFormat  = 0xe2792aca
	extFeatureTable   = 0x6803f857
	maxBackingName    = 1023 // the spec's bound on backing_file_size
	refcountOrder     = 4    // 16-bit refcounts
	maxL1Bytes        = 32 << 20
	minOverlayCluster = 16
	maxOverlayCluster = 21
)

// featureNames is the feature name table QEMU writes into every v3 header
// (type: 0 incompatible, 1 compatible, 2 autoclear; bit; name).
var featureNames = []struct {
	typ, bit byte
	name     string
}{
	{0, 0, "dirty bit"},
	{0, 1, "corrupt bit"},
	{0, 2, "external data file"},
	{0, 3, "compression type"},
	{0, 4, "extended L2 entries"},
	{1, 0, "lazy refcounts"},
	{2, 0, "bitmaps"},
	{2, 1, "raw external data"},
}

// layout checks o and returns its cluster size, L1 entries and the file's
// length.
func (o Overlay) layout() (cluster, l1Size, length int64, err error) {
	bits := o.ClusterBits
	if bits == 0 {
		bits = minOverlayCluster
	}
	refuse := func(format string, args ...any) (int64, int64, int64, error) {
		return 0, 0, 0, fmt.Errorf("%w: %s", ErrOverlayRefused, fmt.Sprintf(format, args...))
	}
	if bits < minOverlayCluster || bits > maxOverlayCluster {
		return refuse("cluster size 2^%d is not one of 64 KiB to 2 MiB", bits)
	}
	cluster = int64(1) << bits
	if o.Size <= 0 || o.Size%512 != 0 {
		return refuse("virtual size %d is not a positive multiple of 512 bytes", o.Size)
	}
	if o.BackingFormat != "raw" && o.BackingFormat != "qcow2" {
		return refuse("backing format %q is neither raw nor qcow2", o.BackingFormat)
	}
	if err := checkBackingName(o.Backing); err != nil {
		return 0, 0, 0, err
	}
	// One L2 table maps cluster/8 clusters; one L1 entry per L2 table.
	perL1 := cluster * (cluster / 8)
	l1Size = o.Size / perL1 // no overflow near MaxInt64
	if o.Size%perL1 != 0 {
		l1Size++
	}
	l1Bytes := l1Size * 8
	l1Clusters := (l1Bytes + cluster - 1) / cluster
	// Every metadata cluster must be counted by the one refcount block.
	if l1Bytes > maxL1Bytes || 3+l1Clusters > cluster/2 {
		return refuse("virtual size %d needs an L1 table of %d bytes, more than this writer lays out", o.Size, l1Bytes)
	}
	if hdr := headerEnd(o.BackingFormat) + int64(len(o.Backing)); hdr > cluster {
		return refuse("the header (%d bytes with the backing file name) does not fit in one %d-byte cluster", hdr, cluster)
	}
	return cluster, l1Size, 3*cluster + l1Bytes, nil
}

// checkBackingName refuses what the layer code never passes: a name QEMU
// would not take as a plain file name (a protocol prefix, json:), one
// that is not a clean path, or one with bytes no file name of ours has.
func checkBackingName(name string) error {
	refuse := func(why string) error {
		return fmt.Errorf("%w: backing file name %q %s", ErrOverlayRefused, bounded([]byte(name)), why)
	}
	switch {
	case name == "":
		return refuse("is empty")
	case len(name) > maxBackingName:
		return refuse(fmt.Sprintf("is %d bytes, longer than qcow2's %d", len(name), maxBackingName))
	case !utf8.ValidString(name):
		return refuse("is not UTF-8")
	case strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return refuse("holds control characters")
	case strings.Contains(name, ":"):
		return refuse("holds a colon (QEMU would read it as a protocol)")
	case filepath.Clean(name) != name:
		return refuse("is not a clean path")
	case name == "." || name == ".." || strings.HasSuffix(name, "/..") || name == "/":
		return refuse("names a directory")
	}
	return nil
}

// headerEnd is where the backing file name starts: after the header
// fields and the extensions.
func headerEnd(format string) int64 {
	return qcowHeaderLength + 8 + pad8(int64(len(format))) + 8 + int64(48*len(featureNames)) + 8
}

func pad8(n int64) int64 { return (n + 7) &^ 7 }

// header is cluster 0's meaningful bytes (the rest of it is zero).
func (o Overlay) header(cluster, l1Size int64) []byte {
	be := binary.BigEndian
	nameOff := headerEnd(o.BackingFormat)
	b := make([]byte, nameOff+int64(len(o.Backing)))
	be.PutUint32(b[0:], qcowMagic)
	be.PutUint32(b[4:], 3)                       // version
	be.PutUint64(b[8:], uint64(nameOff))         // backing_file_offset
	be.PutUint32(b[16:], uint32(len(o.Backing))) // backing_file_size
	be.PutUint32(b[20:], uint32(bitsOf(cluster)))
	be.PutUint64(b[24:], uint64(o.Size))
	// 32: crypt_method 0
	be.PutUint32(b[36:], uint32(l1Size))
	be.PutUint64(b[40:], uint64(3*cluster)) // l1_table_offset
	be.PutUint64(b[48:], uint64(cluster))   // refcount_table_offset
	be.PutUint32(b[56:], 1)                 // refcount_table_clusters
	// 60: nb_snapshots, 64: snapshots_offset, 72/80/88: feature bits: 0
	be.PutUint32(b[96:], refcountOrder)
	be.PutUint32(b[100:], qcowHeaderLength)
	// 104: compression_type zlib (0), 7 bytes of padding.
	p := int64(qcowHeaderLength)
	be.PutUint32(b[p:], extBackingFormat)
	be.PutUint32(b[p+4:], uint32(len(o.BackingFormat)))
	copy(b[p+8:], o.BackingFormat)
	p += 8 + pad8(int64(len(o.BackingFormat)))
	be.PutUint32(b[p:], extFeatureTable)
	be.PutUint32(b[p+4:], uint32(48*len(featureNames)))
	p += 8
	for _, f := range featureNames {
		b[p], b[p+1] = f.typ, f.bit
		copy(b[p+2:p+48], f.name)
		p += 48
	}
	p += 8 // the end extension: type 0, length 0
	copy(b[p:], o.Backing)
	return b
}

func bitsOf(cluster int64) int {
	n := 0
	for cluster > 1 {
		cluster >>= 1
		n++
	}
	return n
}

// WriteOverlay writes o as the new file path (mode 0600), atomically: a
// temporary file beside it, fsynced, then linked to path (which must not
// exist) and the directory fsynced. The zero parts stay holes, so the
// file takes a few KiB whatever its virtual size. A refusal (errors.Is
// ErrOverlayRefused) writes nothing.
func WriteOverlay(path string, o Overlay) error {
	cluster, l1Size, length, err := o.layout()
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".partial-*")
	if err != nil {
		return fmt.Errorf("qcow2 overlay: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	err = writeOverlay(f, o, cluster, l1Size, length)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		// A link, not a rename: an existing path is never replaced.
		err = os.Link(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("qcow2 overlay %s: %w", filepath.Base(path), err)
	}
	if err := state.SyncDir(dir); err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("qcow2 overlay %s: %w", filepath.Base(path), err)
	}
	return nil
}

func writeOverlay(f *os.File, o Overlay, cluster, l1Size, length int64) error {
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if _, err := f.WriteAt(o.header(cluster, l1Size), 0); err != nil {
		return err
	}
	// The refcount table's one entry: the block in cluster 2.
	var rt [8]byte
	binary.BigEndian.PutUint64(rt[:], uint64(2*cluster))
	if _, err := f.WriteAt(rt[:], cluster); err != nil {
		return err
	}
	// Refcount 1 for the header, the table, the block and the L1 clusters.
	used := 3 + (l1Size*8+cluster-1)/cluster
	rb := make([]byte, 2*used)
	for i := range used {
		binary.BigEndian.PutUint16(rb[2*i:], 1)
	}
	if _, err := f.WriteAt(rb, 2*cluster); err != nil {
		return err
	}
	// The L1 table is all zero: a hole up to the file's end.
	if err := f.Truncate(length); err != nil {
		return err
	}
	return f.Sync()
}
