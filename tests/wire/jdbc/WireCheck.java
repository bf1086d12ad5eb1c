// Drives a PostgreSQL-wire server with the real PostgreSQL JDBC driver (pgjdbc) and prints one JSON
// object on stdout. Compiled and run by tests/wire/jdbc_client.py; no build tool, no libraries
// beyond the JDK and the driver.
//
// Input: args[0] is a JSON object with host, port, database, user, password, ssl, sql_with_param,
// param, bad_sql and optionally "props" (an object of extra connection properties, e.g.
// {"loggerLevel": "TRACE"}). Output on success:
//   {"connected": true, "driver_version", "database_product_name", "database_product_version",
//    "tables": [...], "columns": {table: [[name, TYPE_NAME], ...]}, "column_types": [[label, type]],
//    "rows": [[...]], "rows_last": [[...]], "runs": 6, "bad_sqlstate", "bad_message",
//    "after_error_ok": true}
// A failure to connect prints {"connected": false, "sqlstate", "message"} and exits 0. Any other
// failure exits non-zero with a stack trace on stderr; bad input exits 2.

import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

public final class WireCheck {
    static final int RUNS = 6; // pgjdbc's prepareThreshold is 5: run 5+ uses a named statement

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: WireCheck '<json object>'");
            System.exit(2);
        }
        Map<String, Object> in;
        try {
            Object parsed = new Parser(args[0]).parseDocument();
            if (!(parsed instanceof Map)) {
                throw new IllegalArgumentException("input must be a JSON object");
            }
            @SuppressWarnings("unchecked")
            Map<String, Object> m = (Map<String, Object>) parsed;
            in = m;
            for (String k : new String[] {"host", "database", "user", "password", "sql_with_param",
                    "param", "bad_sql"}) {
                str(in, k);
            }
            num(in, "port");
        } catch (IllegalArgumentException e) {
            System.err.println("bad input: " + e.getMessage());
            System.exit(2);
            return;
        }
        System.out.println(run(in));
        System.out.flush();
    }

    static String run(Map<String, Object> in) throws SQLException {
        String url = "jdbc:postgresql://" + str(in, "host") + ":" + num(in, "port") + "/"
                + str(in, "database");
        Properties props = new Properties();
        props.setProperty("user", str(in, "user"));
        props.setProperty("password", str(in, "password"));
        props.setProperty("connectTimeout", "10");
        props.setProperty("ApplicationName", "privgate-wirecheck");
        if (Boolean.TRUE.equals(in.get("ssl"))) {
            props.setProperty("ssl", "true");
            props.setProperty("sslmode", "require");
            // The test server's certificate is self-signed: encrypt, but do not verify.
            props.setProperty("sslfactory", "org.postgresql.ssl.NonValidatingFactory");
        }
        Object extra = in.get("props");
        if (extra instanceof Map) {
            for (Map.Entry<?, ?> e : ((Map<?, ?>) extra).entrySet()) {
                props.setProperty(String.valueOf(e.getKey()), String.valueOf(e.getValue()));
            }
        }

        Json out = new Json();
        Connection conn;
        try {
            conn = DriverManager.getConnection(url, props);
        } catch (SQLException e) {
            out.key("connected").value(false);
            out.key("sqlstate").value(e.getSQLState());
            out.key("message").value(e.getMessage());
            return out.close();
        }
        try (Connection c = conn) {
            DatabaseMetaData md = c.getMetaData();
            out.key("connected").value(true);
            out.key("driver_version").value(md.getDriverVersion());
            out.key("database_product_name").value(md.getDatabaseProductName());
            out.key("database_product_version").value(md.getDatabaseProductVersion());

            // 2. catalog: tables and their columns in schema public
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) {
                    tables.add(rs.getString("TABLE_NAME"));
                }
            }
            out.key("tables").beginArray();
            for (String t : tables) {
                out.value(t);
            }
            out.endArray();
            out.key("columns").beginObject();
            for (String t : tables) {
                out.key(t).beginArray();
                try (ResultSet rs = md.getColumns(null, "public", t, "%")) {
                    while (rs.next()) {
                        out.beginArray()
                                .value(rs.getString("COLUMN_NAME"))
                                .value(rs.getString("TYPE_NAME"))
                                .endArray();
                    }
                }
                out.endArray();
            }
            out.endObject();

            // 3. a prepared statement with one string parameter, run past prepareThreshold
            List<List<String>> first = null;
            List<List<String>> last = null;
            List<String[]> types = null;
            try (PreparedStatement ps = c.prepareStatement(str(in, "sql_with_param"))) {
                for (int run = 0; run < RUNS; run++) {
                    ps.setString(1, str(in, "param"));
                    try (ResultSet rs = ps.executeQuery()) {
                        ResultSetMetaData rmd = rs.getMetaData();
                        int n = rmd.getColumnCount();
                        if (types == null) {
                            types = new ArrayList<>();
                            for (int i = 1; i <= n; i++) {
                                types.add(new String[] {rmd.getColumnLabel(i), rmd.getColumnTypeName(i)});
                            }
                        }
                        List<List<String>> rows = new ArrayList<>();
                        while (rs.next()) {
                            List<String> row = new ArrayList<>(n);
                            for (int i = 1; i <= n; i++) {
                                row.add(rs.getString(i));
                            }
                            rows.add(row);
                        }
                        if (first == null) {
                            first = rows;
                        }
                        last = rows;
                    }
                }
            }
            out.key("column_types").beginArray();
            for (String[] t : types) {
                out.beginArray().value(t[0]).value(t[1]).endArray();
            }
            out.endArray();
            out.key("rows");
            rows(out, first);
            out.key("rows_last");
            rows(out, last);
            out.key("runs").value(RUNS);

            // 4. an error: its SQLSTATE and message
            String badState = null;
            String badMessage = null;
            try (Statement st = c.createStatement()) {
                st.execute(str(in, "bad_sql"));
            } catch (SQLException e) {
                badState = e.getSQLState();
                badMessage = e.getMessage();
            }
            out.key("bad_sqlstate").value(badState);
            out.key("bad_message").value(badMessage);

            // 5. the connection is still usable after the error
            boolean ok;
            try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SELECT 1")) {
                ok = rs.next() && rs.getInt(1) == 1;
            }
            out.key("after_error_ok").value(ok);
        }
        return out.close();
    }

    static void rows(Json out, List<List<String>> rows) {
        out.beginArray();
        for (List<String> row : rows) {
            out.beginArray();
            for (String v : row) {
                out.value(v);
            }
            out.endArray();
        }
        out.endArray();
    }

    static String str(Map<String, Object> in, String key) {
        Object v = in.get(key);
        if (!(v instanceof String)) {
            throw new IllegalArgumentException("input needs string \"" + key + "\"");
        }
        return (String) v;
    }

    static long num(Map<String, Object> in, String key) {
        Object v = in.get(key);
        if (!(v instanceof Number)) {
            throw new IllegalArgumentException("input needs number \"" + key + "\"");
        }
        return ((Number) v).longValue();
    }

    /** A minimal streaming JSON writer producing one object. */
    static final class Json {
        private final StringBuilder sb = new StringBuilder("{");
        private boolean needComma = false;

        private void sep() {
            if (needComma) {
                sb.append(',');
            }
            needComma = true;
        }

        Json key(String k) {
            sep();
            quote(k);
            sb.append(':');
            needComma = false;
            return this;
        }

        Json value(String v) {
            sep();
            if (v == null) {
                sb.append("null");
            } else {
                quote(v);
            }
            return this;
        }

        Json value(boolean v) {
            sep();
            sb.append(v);
            return this;
        }

        Json value(long v) {
            sep();
            sb.append(v);
            return this;
        }

        Json beginArray() {
            sep();
            sb.append('[');
            needComma = false;
            return this;
        }

        Json endArray() {
            sb.append(']');
            needComma = true;
            return this;
        }

        Json beginObject() {
            sep();
            sb.append('{');
            needComma = false;
            return this;
        }

        Json endObject() {
            sb.append('}');
            needComma = true;
            return this;
        }

        String close() {
            return sb.append('}').toString();
        }

        private void quote(String s) {
            sb.append('"');
            for (int i = 0; i < s.length(); i++) {
                char ch = s.charAt(i);
                switch (ch) {
                    case '"': sb.append("\\\""); break;
                    case '\\': sb.append("\\\\"); break;
                    case '\n': sb.append("\\n"); break;
                    case '\r': sb.append("\\r"); break;
                    case '\t': sb.append("\\t"); break;
                    case '\b': sb.append("\\b"); break;
                    case '\f': sb.append("\\f"); break;
                    default:
                        // control chars, and U+2028/9 and lone surrogates stay safe as escapes
                        if (ch < 0x20 || ch == 0x2028 || ch == 0x2029 || Character.isSurrogate(ch)
                                && !validPair(s, i)) {
                            sb.append(String.format("\\u%04x", (int) ch));
                        } else {
                            sb.append(ch);
                        }
                }
            }
            sb.append('"');
        }

        private static boolean validPair(String s, int i) {
            char ch = s.charAt(i);
            if (Character.isHighSurrogate(ch)) {
                return i + 1 < s.length() && Character.isLowSurrogate(s.charAt(i + 1));
            }
            return i > 0 && Character.isHighSurrogate(s.charAt(i - 1));
        }
    }

    /** A minimal JSON parser: objects, arrays, strings, numbers, true/false/null. */
    static final class Parser {
        private final String s;
        private int pos = 0;

        Parser(String s) {
            this.s = s;
        }

        Object parseDocument() {
            Object v = parseValue();
            skipWs();
            if (pos != s.length()) {
                throw error("trailing characters");
            }
            return v;
        }

        private IllegalArgumentException error(String what) {
            return new IllegalArgumentException(what + " at offset " + pos);
        }

        private void skipWs() {
            while (pos < s.length() && " \t\r\n".indexOf(s.charAt(pos)) >= 0) {
                pos++;
            }
        }

        private char peek() {
            if (pos >= s.length()) {
                throw error("unexpected end");
            }
            return s.charAt(pos);
        }

        private void expect(char c) {
            if (peek() != c) {
                throw error("expected '" + c + "'");
            }
            pos++;
        }

        private Object parseValue() {
            skipWs();
            char c = peek();
            switch (c) {
                case '{': return parseObject();
                case '[': return parseArray();
                case '"': return parseString();
                case 't': return literal("true", Boolean.TRUE);
                case 'f': return literal("false", Boolean.FALSE);
                case 'n': return literal("null", null);
                default:
                    if (c == '-' || (c >= '0' && c <= '9')) {
                        return parseNumber();
                    }
                    throw error("unexpected character '" + c + "'");
            }
        }

        private Object literal(String word, Object value) {
            if (!s.startsWith(word, pos)) {
                throw error("expected " + word);
            }
            pos += word.length();
            return value;
        }

        private Map<String, Object> parseObject() {
            Map<String, Object> m = new LinkedHashMap<>();
            expect('{');
            skipWs();
            if (peek() == '}') {
                pos++;
                return m;
            }
            while (true) {
                skipWs();
                String k = parseString();
                skipWs();
                expect(':');
                m.put(k, parseValue());
                skipWs();
                if (peek() == ',') {
                    pos++;
                } else {
                    expect('}');
                    return m;
                }
            }
        }

        private List<Object> parseArray() {
            List<Object> a = new ArrayList<>();
            expect('[');
            skipWs();
            if (peek() == ']') {
                pos++;
                return a;
            }
            while (true) {
                a.add(parseValue());
                skipWs();
                if (peek() == ',') {
                    pos++;
                } else {
                    expect(']');
                    return a;
                }
            }
        }

        private String parseString() {
            expect('"');
            StringBuilder sb = new StringBuilder();
            while (true) {
                char c = peek();
                pos++;
                if (c == '"') {
                    return sb.toString();
                }
                if (c != '\\') {
                    sb.append(c);
                    continue;
                }
                char e = peek();
                pos++;
                switch (e) {
                    case '"': sb.append('"'); break;
                    case '\\': sb.append('\\'); break;
                    case '/': sb.append('/'); break;
                    case 'b': sb.append('\b'); break;
                    case 'f': sb.append('\f'); break;
                    case 'n': sb.append('\n'); break;
                    case 'r': sb.append('\r'); break;
                    case 't': sb.append('\t'); break;
                    case 'u':
                        if (pos + 4 > s.length()) {
                            throw error("short \\u escape");
                        }
                        try {
                            sb.append((char) Integer.parseInt(s.substring(pos, pos + 4), 16));
                        } catch (NumberFormatException ex) {
                            throw error("bad \\u escape");
                        }
                        pos += 4;
                        break;
                    default:
                        throw error("bad escape");
                }
            }
        }

        private Number parseNumber() {
            int start = pos;
            while (pos < s.length() && "+-0123456789.eE".indexOf(s.charAt(pos)) >= 0) {
                pos++;
            }
            String t = s.substring(start, pos);
            try {
                if (t.contains(".") || t.contains("e") || t.contains("E")) {
                    return Double.parseDouble(t);
                }
                return Long.parseLong(t);
            } catch (NumberFormatException ex) {
                throw error("bad number '" + t + "'");
            }
        }
    }
}
