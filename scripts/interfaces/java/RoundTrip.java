// A Spring service's view of the event schemas: each schema's example is read into the class
// quicktype generated from the schema, and written back with Jackson's defaults (unset optional
// members become `null`, as ObjectMapper writes them). The output is then validated against
// the schemas by validate.mjs. Usage: RoundTrip <out dir> <schema.json>...
import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.databind.DeserializationContext;
import com.fasterxml.jackson.databind.JsonDeserializer;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.JsonSerializer;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializerProvider;
import com.fasterxml.jackson.databind.module.SimpleModule;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.OffsetDateTime;
import java.time.format.DateTimeFormatter;

public class RoundTrip {
    public static void main(String[] args) throws Exception {
        // What jackson-datatype-jsr310 (on every Spring Boot classpath, not in Debian) does for
        // OffsetDateTime: ISO-8601 with an offset.
        SimpleModule time = new SimpleModule();
        time.addSerializer(OffsetDateTime.class, new JsonSerializer<OffsetDateTime>() {
            @Override
            public void serialize(OffsetDateTime value, JsonGenerator out, SerializerProvider p) throws IOException {
                out.writeString(DateTimeFormatter.ISO_OFFSET_DATE_TIME.format(value));
            }
        });
        time.addDeserializer(OffsetDateTime.class, new JsonDeserializer<OffsetDateTime>() {
            @Override
            public OffsetDateTime deserialize(JsonParser in, DeserializationContext c) throws IOException {
                return OffsetDateTime.parse(in.getText());
            }
        });
        ObjectMapper mapper = new ObjectMapper().registerModule(time);
        Path out = Path.of(args[0]);
        for (int i = 1; i < args.length; i++) {
            Path schemaFile = Path.of(args[i]);
            JsonNode schema = mapper.readTree(schemaFile.toFile());
            Class<?> type = Class.forName("dev.automation.events." + schema.get("title").asText());
            Object event = mapper.treeToValue(schema.get("examples").get(0), type);
            Files.writeString(out.resolve(schemaFile.getFileName()), mapper.writeValueAsString(event));
        }
    }
}
