import org.apache.avro.*;
import java.nio.file.*;
// Prints the CRC-64-AVRO fingerprint (little-endian hex) of each .avsc given, as
// computed by the reference implementation (Java SchemaNormalization). The
// output lines go into schemas/avro/FINGERPRINTS; see schemas/README.md.
public class Fingerprint { public static void main(String[] a) throws Exception {
 for (String f : a) { Schema s = new Schema.Parser().parse(new String(Files.readAllBytes(Paths.get(f))));
  long fp = SchemaNormalization.parsingFingerprint64(s);
  StringBuilder sb=new StringBuilder(); for(int i=0;i<8;i++) sb.append(String.format("%02x",(fp>>>(8*i))&0xff));
  System.out.println(sb+" "+f); } } }
