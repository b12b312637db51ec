package dbusapi

import (
	"encoding/xml"
	"sort"
	"strings"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"

	"github.com/paddock-vm/paddock/api"
)

// Names of the bus name, objects and interfaces.
const (
	BusName       = "org.paddock1"
	ManagerPath   = dbus.ObjectPath("/org/paddock1")
	ManagerIface  = "org.paddock1.Manager"
	VMIface       = "org.paddock1.VM"
	JobIface      = "org.paddock1.Job"
	ErrorPrefix   = "org.paddock1.Error."
	vmDir         = "/org/paddock1/vm"
	jobDir        = "/org/paddock1/job"
	propsIface    = "org.freedesktop.DBus.Properties"
	objMgrIface   = "org.freedesktop.DBus.ObjectManager"
	introIface    = "org.freedesktop.DBus.Introspectable"
	emitsChanged  = "org.freedesktop.DBus.Property.EmitsChangedSignal"
	varlinkMethod = "io.paddock.v1."
)

// arg is one argument of a method or signal: its name and a value of its
// Go type, from which its D-Bus signature is taken.
type arg struct {
	name string
	val  any
}

// member is one method: its arguments, the io.paddock.v1 method it routes
// to (the one handler both front-ends share; "" for what only the bus
// has), and the function that serves it.
type member struct {
	name    string
	in, out []arg
	varlink string
	doc     string
	fn      func(c *call, in []any) ([]any, error)
}

type signal struct {
	name string
	args []arg
}

// property is one read-only property; emits says how changes are signalled
// (the EmitsChangedSignal annotation).
type property struct {
	name  string
	val   any
	emits string
}

// iface is one interface as served and as introspected.
type iface struct {
	name    string
	methods []member
	signals []signal
	props   []property
}

type (
	options    = map[string]dbus.Variant
	properties = map[string]dbus.Variant
)

// port is one published port as the Ports property carries it:
// (host_ip, host_port, guest_port, proto).
type port struct {
	HostIP    string
	HostPort  int32
	GuestPort int32
	Proto     string
}

// vmProperties are the org.paddock1.VM properties, in the order
// introspection lists them. Every one but Health and LastEventSeq is the
// io.paddock.v1 VM record's; all change with a PropertiesChanged signal
// fed by the event stream varlink's Events serves.
var vmProperties = []property{
	{"Id", "", "const"}, {"Name", "", "true"}, {"Owner", uint32(0), "const"}, {"Image", "", "true"},
	{"State", "", "true"}, {"StateReason", "", "true"}, {"Health", "", "true"},
	{"Address", "", "true"}, {"Network", "", "true"}, {"Ports", []port{}, "true"},
	{"CPUs", int32(0), "true"}, {"Memory", uint64(0), "true"}, {"DiskSize", uint64(0), "true"},
	{"AutoStop", "", "true"}, {"CreatedAt", "", "const"}, {"LastEventSeq", uint64(0), "true"},
}

var jobProperties = []property{
	{"Id", uint32(0), "const"}, {"VM", dbus.ObjectPath("/"), "const"}, {"Operation", "", "const"}, {"State", "", "const"},
}

var managerProperties = []property{{"Version", "", "const"}}

// surface builds the served interfaces; s may be nil when only the shape
// is wanted (introspection, tests).
func surface(s *Server) (manager, vm, job, objects *iface) {
	var fn = func(f func(*Server, *call, []any) ([]any, error)) func(*call, []any) ([]any, error) {
		return func(c *call, in []any) ([]any, error) { return f(s, c, in) }
	}
	o := dbus.ObjectPath("/")
	manager = &iface{name: ManagerIface,
		methods: []member{
			{name: "CreateVM", in: []arg{{"options", options{}}}, out: []arg{{"vm", o}}, varlink: "Create", fn: fn((*Server).createVM),
				doc: "options: the io.paddock.v1 Create parameters by name (name s, image s, cpus i, memory x, disk_size x, auto_stop s, env as, kernel s, network s, ports aa{sv}, ...)"},
			{name: "GetVM", in: []arg{{"ref", ""}}, out: []arg{{"vm", o}}, varlink: "Get", fn: fn((*Server).getVM)},
			{name: "ListVMs", out: []arg{{"vms", []dbus.ObjectPath{}}}, varlink: "List", fn: fn((*Server).listVMs)},
			{name: "Subscribe", fn: fn((*Server).subscribe),
				doc: "signals reach callers that made any call (this one makes none else) and may see the VM; Unsubscribe stops them"},
			{name: "Unsubscribe", fn: fn((*Server).unsubscribe)},
		},
		signals: []signal{
			{"VMNew", []arg{{"vm", o}}},
			{"VMRemoved", []arg{{"vm", o}}},
			{"JobDone", []arg{{"id", uint32(0)}, {"job", o}, {"vm", o}, {"operation", ""}, {"result", ""}, {"error", ""}, {"message", ""}}},
		},
		props: managerProperties,
	}
	objects = &iface{name: objMgrIface,
		methods: []member{{name: "GetManagedObjects", out: []arg{{"objects", map[dbus.ObjectPath]map[string]properties{}}}, varlink: "List", fn: fn((*Server).getManagedObjects)}},
		signals: []signal{
			{"InterfacesAdded", []arg{{"object", o}, {"interfaces", map[string]properties{}}}},
			{"InterfacesRemoved", []arg{{"object", o}, {"interfaces", []string{}}}},
		},
	}
	vm = &iface{name: VMIface,
		methods: []member{
			{name: "Start", out: []arg{{"job", o}}, varlink: "Start", fn: fn((*Server).startVM), doc: "returns at once; JobDone tells the outcome"},
			{name: "Stop", out: []arg{{"job", o}}, varlink: "Stop", fn: fn((*Server).stopVM), doc: "returns at once; JobDone tells the outcome"},
			{name: "Restart", out: []arg{{"job", o}}, varlink: "Stop", fn: fn((*Server).restartVM), doc: "Stop (when running) then Start; returns at once; JobDone tells the outcome"},
			{name: "Kill", varlink: "Stop", fn: fn((*Server).killVM), doc: "Stop with force"},
			{name: "Delete", varlink: "Delete", fn: fn((*Server).deleteVM)},
			{name: "Set", in: []arg{{"options", options{}}}, varlink: "Set", fn: fn((*Server).setVM), doc: "options: the io.paddock.v1 Set parameters by name, less vm"},
			{name: "GetStats", out: []arg{{"stats", options{}}}, varlink: "Stats", fn: fn((*Server).getStats),
				doc: "the io.paddock.v1 Stats figures of the running VM by name (health s, host a{sv}, guest a{sv}, ...)"},
			{name: "Exec", in: []arg{{"command", []string{}}, {"options", options{}}, {"stdin", dbus.UnixFD(0)}, {"stdout", dbus.UnixFD(0)}, {"stderr", dbus.UnixFD(0)}},
				out: []arg{{"job", o}}, varlink: "Exec", fn: fn((*Server).execVM),
				doc: "runs command with the passed sockets as its stdio; options: env as, workdir s, user s; returns at once; JobDone's message is exit N or signal N"},
			{name: "OpenConsole", in: []arg{{"input", dbus.UnixFD(0)}, {"output", dbus.UnixFD(0)}}, out: []arg{{"job", o}}, varlink: "Console", fn: fn((*Server).openConsole),
				doc: "attaches the passed sockets to the serial console until they close or Ctrl-] is sent; returns at once; JobDone when detached"},
		},
		props: vmProperties,
	}
	job = &iface{name: JobIface, props: jobProperties}
	return manager, vm, job, objects
}

func sig(v any) string { return dbus.SignatureOf(v).String() }

func (i *iface) introspect() introspect.Interface {
	out := introspect.Interface{Name: i.name}
	for _, m := range i.methods {
		im := introspect.Method{Name: m.name}
		for _, a := range m.in {
			im.Args = append(im.Args, introspect.Arg{Name: a.name, Type: sig(a.val), Direction: "in"})
		}
		for _, a := range m.out {
			im.Args = append(im.Args, introspect.Arg{Name: a.name, Type: sig(a.val), Direction: "out"})
		}
		if m.varlink != "" {
			im.Annotations = append(im.Annotations, introspect.Annotation{Name: "org.paddock1.Varlink", Value: varlinkMethod + m.varlink})
		}
		if m.doc != "" {
			im.Annotations = append(im.Annotations, introspect.Annotation{Name: "org.paddock1.Doc", Value: m.doc})
		}
		out.Methods = append(out.Methods, im)
	}
	for _, s := range i.signals {
		is := introspect.Signal{Name: s.name}
		for _, a := range s.args {
			is.Args = append(is.Args, introspect.Arg{Name: a.name, Type: sig(a.val)})
		}
		out.Signals = append(out.Signals, is)
	}
	for _, p := range i.props {
		out.Properties = append(out.Properties, introspect.Property{Name: p.name, Type: sig(p.val), Access: "read",
			Annotations: []introspect.Annotation{{Name: emitsChanged, Value: p.emits}}})
	}
	return out
}

var propertiesData = introspect.Interface{Name: propsIface,
	Methods: []introspect.Method{
		{Name: "Get", Args: []introspect.Arg{{Name: "interface", Type: "s", Direction: "in"}, {Name: "property", Type: "s", Direction: "in"}, {Name: "value", Type: "v", Direction: "out"}}},
		{Name: "GetAll", Args: []introspect.Arg{{Name: "interface", Type: "s", Direction: "in"}, {Name: "properties", Type: "a{sv}", Direction: "out"}}},
		{Name: "Set", Args: []introspect.Arg{{Name: "interface", Type: "s", Direction: "in"}, {Name: "property", Type: "s", Direction: "in"}, {Name: "value", Type: "v", Direction: "in"}}},
	},
	Signals: []introspect.Signal{{Name: "PropertiesChanged", Args: []introspect.Arg{{Name: "interface", Type: "s"}, {Name: "changed", Type: "a{sv}"}, {Name: "invalidated", Type: "as"}}}},
}

// nodeXML renders one object's introspection.
func nodeXML(ifaces []*iface, children []string) string {
	n := introspect.Node{Interfaces: []introspect.Interface{introspect.IntrospectData, introspect.PeerData}}
	if len(ifaces) > 0 {
		n.Interfaces = append(n.Interfaces, propertiesData)
	}
	for _, i := range ifaces {
		n.Interfaces = append(n.Interfaces, i.introspect())
	}
	sort.Strings(children)
	for _, c := range children {
		n.Children = append(n.Children, introspect.Node{Name: c})
	}
	b, err := xml.MarshalIndent(n, "", "  ")
	if err != nil {
		return ""
	}
	return strings.TrimLeft(introspect.IntrospectDeclarationString, "\n\t") + string(b) + "\n"
}

// Surface is the introspection of every interface paddockd serves on the
// bus, as the golden file pins it: the manager object, then one VM object
// and one job object.
func Surface() string {
	manager, vm, job, objects := surface(nil)
	return "# " + string(ManagerPath) + "\n" + nodeXML([]*iface{manager, objects}, []string{"job", "vm"}) +
		"\n# " + vmDir + "/<id>\n" + nodeXML([]*iface{vm}, nil) +
		"\n# " + jobDir + "/<n>\n" + nodeXML([]*iface{job}, nil)
}

// Routes lists the io.paddock.v1 methods the D-Bus surface routes to, so a
// test can hold them to the one dispatch table.
func Routes() []string {
	manager, vm, _, objects := surface(nil)
	var out []string
	for _, i := range []*iface{manager, vm, objects} {
		for _, m := range i.methods {
			if m.varlink != "" {
				out = append(out, api.Interface+"."+m.varlink)
			}
		}
	}
	return out
}
